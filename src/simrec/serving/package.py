"""The package step: bundle a training run's embedding model, faiss index, item metadata and
thumbnails into one MLflow pyfunc model, log it with lineage, register it and set an alias.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pyarrow.compute as pc
import tensorflow as tf
from mlflow.models import infer_signature
from mlflow.models.signature import ModelSignature
from mlflow.pyfunc import PythonModelContext
from mlflow.types.schema import ColSpec, Schema
from PIL import Image

import simrec
from simrec.config import Settings
from simrec.images import open_image
from simrec.index.faiss_index import META_FILE
from simrec.lake.tables import Lakehouse
from simrec.runs import INDEX_ARTIFACT as RUN_INDEX_ARTIFACT
from simrec.runs import ITEMS_FILE, load_embedding_model, training_table
from simrec.serving.pyfunc import (
    EMBEDDING_MODEL_ARTIFACT,
    IMAGE_COLUMN,
    INDEX_ARTIFACT,
    ITEM_ID_COLUMN,
    ITEMS_ARTIFACT,
    K_COLUMN,
    THUMBNAIL_COLUMN,
    THUMBNAILS_ARTIFACT,
    THUMBNAILS_PARAM,
    BundleConfig,
    EmbeddingSearchModel,
    ImageSearchModel,
)
from simrec.tracking import log_table_input, setup_mlflow

MODEL_NAME = "simrec_model"  # the logged model's name inside the package run
# What the bundle imports at inference time, pinned to the versions that packaged it.
RUNTIME_DISTRIBUTIONS = (
    "mlflow",
    "tensorflow",
    "faiss-cpu",
    "numpy",
    "pandas",
    "pillow",
    "pyarrow",
    "pydantic",
    "PyYAML",
    "protobuf",
)


@dataclass(frozen=True)
class PackageResult:
    run_id: str  # the package run
    model_uri: str  # the logged model (models:/m-…)
    registered_name: str
    version: int
    alias: str | None
    lineage: dict[str, Any]

    @property
    def registry_uri(self) -> str:
        """`models:/name@alias` (or `models:/name/version` without an alias)."""
        if self.alias:
            return f"models:/{self.registered_name}@{self.alias}"
        return f"models:/{self.registered_name}/{self.version}"


def runtime_requirements() -> list[str]:
    return [f"{name}=={version(name)}" for name in RUNTIME_DISTRIBUTIONS]


def thumbnail_png(payload: bytes, size: int, source: str = "image") -> bytes:
    """A PNG that fits in `size`×`size` (shrunk, never enlarged), keeping the aspect ratio."""
    image = open_image(payload, source)
    if image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def make_thumbnails(item_ids: list[str], images: list[bytes], size: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            ITEM_ID_COLUMN: item_ids,
            THUMBNAIL_COLUMN: [
                thumbnail_png(payload, size, f"item {item_id}")
                for item_id, payload in zip(item_ids, images, strict=True)
            ],
        }
    )


def query_frame(images: list[bytes], ks: list[int] | None = None) -> pd.DataFrame:
    """The model's input: base64 images, and k per query when given."""
    frame = pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(p).decode("ascii") for p in images]})
    if ks is not None:
        frame[K_COLUMN] = pd.Series(ks, dtype="int64")
    return frame


def bundle_signature(example: pd.DataFrame, output: pd.DataFrame) -> ModelSignature:
    """Inferred from a real example and its real output; `k` is then marked optional (one
    example always has it, but requests may leave it out to get the default)."""
    with warnings.catch_warnings():
        # "integer columns cannot hold missing values": true, and k is never missing in a
        # row; it is left out as a whole column or given (the server rejects anything else).
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature = infer_signature(example, output, params={THUMBNAILS_PARAM: True})
    signature.inputs = Schema(
        [
            ColSpec(spec.type, spec.name, required=spec.name != K_COLUMN)
            for spec in signature.inputs.inputs
        ]
    )
    return signature


def export_embedding_model(
    keras_model: tf.keras.Model, folder: Path, image_size: int, channels: int
) -> Path:
    """Save `keras_model` as a plain SavedModel whose `embed` takes raw uint8 pixels."""
    module = tf.Module()
    module.model = keras_model
    spec = tf.TensorSpec([None, image_size, image_size, channels], tf.uint8, name="pixels")

    @tf.function(input_signature=[spec])
    def embed(pixels: tf.Tensor) -> tf.Tensor:
        return keras_model(tf.cast(pixels, tf.float32), training=False)

    module.embed = embed
    tf.saved_model.save(module, str(folder), signatures={"serving_default": embed})
    return folder


def _code_copy(folder: Path) -> Path:
    """A copy of the simrec package (without caches), so the bundle loads where simrec is
    not installed."""
    target = folder / "simrec"
    shutil.copytree(
        Path(simrec.__file__).parent, target, ignore=shutil.ignore_patterns("__pycache__")
    )
    return target


def log_bundle(
    python_model: ImageSearchModel,
    artifacts: dict[str, str],
    config: BundleConfig,
    example: pd.DataFrame,
    lineage: dict[str, Any],
    registered_name: str,
    alias: str | None,
) -> PackageResult:
    """Load the bundle in-process (failing early on any mismatch), infer the signature from
    its answer to `example`, log it to the active run, register it and set `alias`."""
    context = PythonModelContext(artifacts=artifacts, model_config=config.model_dump())
    probe = type(python_model)()
    probe.load_context(context)
    signature = bundle_signature(example, probe.predict(context, example))
    run = mlflow.active_run()
    with tempfile.TemporaryDirectory(prefix="simrec-code-") as code_folder:
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=python_model,
            artifacts=artifacts,
            model_config=config.model_dump(),
            signature=signature,
            input_example=example,
            pip_requirements=runtime_requirements(),
            code_paths=[str(_code_copy(Path(code_folder)))],
            metadata={"simrec": {"lineage": lineage, "bundle": config.model_dump()}},
        )
    registered = mlflow.register_model(info.model_uri, registered_name)
    client = mlflow.MlflowClient()
    for key, value in lineage.items():
        client.set_model_version_tag(registered_name, registered.version, key, str(value))
    if alias:
        client.set_registered_model_alias(registered_name, alias, registered.version)
    return PackageResult(
        run_id=run.info.run_id,
        model_uri=info.model_uri,
        registered_name=registered_name,
        version=int(registered.version),
        alias=alias,
        lineage=lineage,
    )


def package_run(
    settings: Settings,
    lake: Lakehouse,
    run_id: str,
    registered_name: str | None = None,
    alias: str | None = None,
) -> PackageResult:
    """Bundle training run `run_id` (which must have an index) as the deployable model."""
    setup_mlflow(settings.mlflow)
    tags = mlflow.get_run(run_id).data.tags
    if tags.get("simrec.index") != "built":
        raise LookupError(f"run {run_id} has no index yet; run `simrec index --run-id {run_id}`")
    table = training_table(run_id)
    serving = settings.serving
    registered_name = registered_name or serving.registered_model
    alias = serving.alias if alias is None else (alias or None)

    with tempfile.TemporaryDirectory(prefix="simrec-package-") as workdir:
        folder = Path(workdir)
        model_dir = export_embedding_model(
            load_embedding_model(run_id),
            folder / "embedding_model",
            settings.model.image_size,
            settings.model.channels,
        )
        index_dir = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=RUN_INDEX_ARTIFACT, dst_path=str(folder)
        )
        items = pd.read_parquet(Path(index_dir) / ITEMS_FILE)
        index_settings = json.loads((Path(index_dir) / META_FILE).read_text())["settings"]
        items_file = folder / "items.parquet"
        items.to_parquet(items_file, index=False)

        item_ids = items[ITEM_ID_COLUMN].astype(str).tolist()
        rows = lake.read(table.name, table.version, columns=["id", "split", "image"])
        catalog = rows.filter(pc.is_in(rows.column("id"), value_set=pc.cast(item_ids, "string")))
        image_of = dict(
            zip(catalog.column("id").to_pylist(), catalog.column("image").to_pylist(), strict=True)
        )
        thumbnails_file = folder / "thumbnails.parquet"
        make_thumbnails(
            item_ids, [image_of[item_id] for item_id in item_ids], serving.thumbnail_size
        ).to_parquet(thumbnails_file, index=False)

        # A real input example: two test-split images, asking for the default k.
        test_rows = rows.filter(pc.equal(rows.column("split"), "test")).sort_by("id").slice(0, 2)
        example_images = test_rows.column("image").to_pylist() or [image_of[item_ids[0]]]
        example = query_frame(example_images, [settings.recommend.k] * len(example_images))

        config = BundleConfig(
            image_size=settings.model.image_size,
            channels=settings.model.channels,
            default_k=settings.recommend.k,
            max_k=settings.recommend.max_k,
            max_batch_size=serving.max_batch_size,
            max_image_pixels=serving.max_image_pixels,
            search_threads=serving.search_threads,
        )
        lineage = {
            "source_table": table.name,
            "source_table_path": table.path,
            "source_table_version": table.version,
            "training_run_id": run_id,
            "index_size": len(items),
            "index_kind": index_settings["kind"],
            "index_metric": index_settings["metric"],
        }
        artifacts = {
            EMBEDDING_MODEL_ARTIFACT: str(model_dir),
            INDEX_ARTIFACT: index_dir,
            ITEMS_ARTIFACT: str(items_file),
            THUMBNAILS_ARTIFACT: str(thumbnails_file),
        }
        with mlflow.start_run(run_name="package"):
            mlflow.set_tags({"simrec.step": "package", "simrec.training_run_id": run_id})
            log_table_input(table, context="training")
            mlflow.log_params({f"lineage.{key}": value for key, value in lineage.items()})
            return log_bundle(
                EmbeddingSearchModel(),
                artifacts,
                config,
                example,
                lineage,
                registered_name,
                alias,
            )
