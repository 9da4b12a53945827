"""A registered bundle on local disk: which registry version it is, its lineage, its model
config and artifact files, and its embedding model as a function of raw pixels.

What `simrec reindex` starts from and `simrec batch-recommend` ships to Spark executors.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from simrec.images import decode_batch
from simrec.serving.pyfunc import BundleConfig

_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")

Embedder = Callable[[np.ndarray], np.ndarray]


class BundleNotFoundError(LookupError):
    """A registry URI that names no registered version."""


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: int

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class LocalBundle:
    """A registered version's bundle downloaded to `folder`."""

    registered: RegisteredVersion
    folder: Path
    lineage: dict[str, Any]
    config: BundleConfig
    artifacts: dict[str, Path]  # artifact key (pyfunc.*_ARTIFACT) -> local path
    example: pd.DataFrame | None


def resolve_version(model_uri: str) -> RegisteredVersion:
    """`models:/name@alias` or `models:/name/3` → the registered version it names now."""
    match = _REGISTRY_URI.match(model_uri.strip())
    if not match:
        raise ValueError(
            f"expected a registry URI like models:/simrec-fashion@champion or "
            f"models:/simrec-fashion/3, got {model_uri!r}"
        )
    name = match["name"]
    client = mlflow.MlflowClient()
    try:
        if match["alias"]:
            version = client.get_model_version_by_alias(name, match["alias"]).version
        else:
            version = client.get_model_version(name, match["version"]).version
    except MlflowException as error:
        raise BundleNotFoundError(
            f"{model_uri} names no registered model version; package one with `simrec package`"
        ) from error
    return RegisteredVersion(name, int(version))


def registered_lineage(model_uri: str) -> dict[str, Any]:
    """The lineage a registered bundle carries (reads its MLmodel file only)."""
    metadata = mlflow.models.get_model_info(model_uri).metadata or {}
    if "simrec" not in metadata:
        raise BundleNotFoundError(f"{model_uri} is not a simrec bundle (no simrec metadata)")
    return dict(metadata["simrec"]["lineage"])


def download_bundle(model_uri: str, destination: Path) -> LocalBundle:
    """Resolve `model_uri` and download that version's bundle under `destination`."""
    registered = resolve_version(model_uri)
    folder = Path(mlflow.artifacts.download_artifacts(registered.uri, dst_path=str(destination)))
    return read_bundle(folder, registered)


def read_bundle(folder: Path, registered: RegisteredVersion) -> LocalBundle:
    model = Model.load(str(folder))
    pyfunc = model.flavors["python_function"]
    simrec_metadata = (model.metadata or {}).get("simrec")
    if not simrec_metadata:
        raise BundleNotFoundError(f"{registered.uri} is not a simrec bundle (no simrec metadata)")
    artifacts = {key: folder / entry["path"] for key, entry in pyfunc.get("artifacts", {}).items()}
    example = model.load_input_example(str(folder))
    return LocalBundle(
        registered=registered,
        folder=folder,
        lineage=dict(simrec_metadata["lineage"]),
        config=BundleConfig.model_validate(pyfunc.get("config") or simrec_metadata["bundle"]),
        artifacts=artifacts,
        example=example if isinstance(example, pd.DataFrame) else None,
    )


def saved_model_embedder(folder: Path, batch_size: int) -> Embedder:
    """The bundle's SavedModel as `embed(pixels uint8 (n, h, w, c)) -> float32 (n, dim)`,
    `batch_size` images at a time."""
    import tensorflow as tf

    saved_model = tf.saved_model.load(str(folder))

    def embed(pixels: np.ndarray) -> np.ndarray:
        chunks = [
            saved_model.embed(pixels[start : start + batch_size]).numpy()
            for start in range(0, len(pixels), batch_size)
        ]
        if not chunks:
            dim = saved_model.embed(np.zeros((1, *pixels.shape[1:]), np.uint8)).shape[-1]
            return np.zeros((0, dim), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)

    return embed


def embed_images(
    embedder: Embedder,
    images: list[bytes],
    config: BundleConfig,
    batch_size: int,
    decoded: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Decode stored image bytes exactly as a query image is decoded, then embed them,
    `batch_size` at a time (so a large table never sits in memory as pixels, unless the
    caller asks for them: each decoded batch is appended to `decoded`)."""
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = decode_batch(
            images[start : start + batch_size],
            config.image_size,
            config.channels,
            config.max_image_pixels,
            config.image_formats,
        )
        if decoded is not None:
            decoded.append(pixels)
        chunks.append(embedder(pixels))
    if not chunks:
        return embedder(
            np.zeros((0, config.image_size, config.image_size, config.channels), np.uint8)
        )
    return np.concatenate(chunks)
