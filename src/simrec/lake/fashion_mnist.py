"""Fashion-MNIST → Delta: find (or download and verify) the IDX files, write one row per image."""

from __future__ import annotations

import gzip
import hashlib
import logging
import shutil
import struct
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from simrec.config import FashionMnistSettings
from simrec.images import encode_png, sha256_hex
from simrec.lake.tables import Lakehouse, TableVersion
from simrec.progress import progress

log = logging.getLogger(__name__)

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

FASHION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("split", pa.string()),
        ("label", pa.int32()),
        ("label_name", pa.string()),
        ("image", pa.binary()),
        ("sha256", pa.string()),
        ("source", pa.string()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)


class DatasetFileError(ValueError):
    """A Fashion-MNIST file that is missing, corrupt or fails its checksum."""


def _read_gz(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError) as error:
        raise DatasetFileError(f"{path}: not a readable gzip file ({error})") from error


def verify_file(path: Path, expected_sha256: str | None) -> bytes:
    """The decompressed bytes of `path`, checked against the sha256 of the official content."""
    content = _read_gz(path)
    if expected_sha256 and hashlib.sha256(content).hexdigest() != expected_sha256:
        raise DatasetFileError(
            f"{path}: sha256 of its content does not match the official Fashion-MNIST file"
        )
    return content


def parse_idx(content: bytes, source: str) -> np.ndarray:
    """Parse an IDX (ubyte) buffer into a uint8 array of its declared shape."""
    if len(content) < 4:
        raise DatasetFileError(f"{source}: too short for an IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", content[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DatasetFileError(f"{source}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", content[4 : 4 + 4 * ndim])
    body = np.frombuffer(content, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetFileError(f"{source}: holds {body.size} bytes, header says shape {shape}")
    return body.reshape(shape)


def _download(url: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    log.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as handle:
        shutil.copyfileobj(response, handle)
    partial.replace(target)


def locate_files(settings: FashionMnistSettings) -> tuple[Path, str]:
    """The folder holding all four files and how it was found (configured/system/download)."""
    names = list(settings.files) or [name for pair in SPLIT_FILES.values() for name in pair]
    if settings.source_dir is not None:
        # An explicit folder is what the user asked for: never fall back to another source.
        folder = Path(settings.source_dir)
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise DatasetFileError(
                f"Fashion-MNIST folder {folder} (fashion_mnist.source_dir / --source) lacks "
                f"{', '.join(missing)}; point it at the folder holding the four IDX .gz files, "
                f"or unset it to use {settings.system_dir} or a verified download"
            )
        return folder, "configured"
    if all((Path(settings.system_dir) / name).is_file() for name in names):
        return Path(settings.system_dir), "system"
    target = Path(settings.download_dir)
    for name in names:
        path = target / name
        if not path.is_file():
            _download(settings.base_url.rstrip("/") + "/" + name, path)
        try:
            verify_file(path, settings.files.get(name))
        except DatasetFileError:
            path.unlink(missing_ok=True)  # never keep a bad download around
            raise
    return target, "download"


def load_split(
    folder: Path, split: str, checksums: dict[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name = SPLIT_FILES[split]
    images = parse_idx(verify_file(folder / images_name, checksums.get(images_name)), images_name)
    labels = parse_idx(verify_file(folder / labels_name, checksums.get(labels_name)), labels_name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetFileError(
            f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match"
        )
    return images, labels


def build_rows(
    images: np.ndarray,
    labels: np.ndarray,
    split: str,
    label_names: list[str],
    source: str,
    ingested_at: datetime,
) -> pa.Table:
    bar = progress(images, desc=f"encoding {split} PNGs", unit="img")
    pngs = [encode_png(image) for image in bar]
    return pa.table(
        {
            "id": [f"fmnist-{split}-{position:05d}" for position in range(len(images))],
            "split": [split] * len(images),
            "label": labels.astype(np.int32),
            "label_name": [label_names[label] for label in labels],
            "image": pngs,
            "sha256": [sha256_hex(png) for png in pngs],
            "source": [source] * len(images),
            "ingested_at": pa.array([ingested_at] * len(images), pa.timestamp("us", tz="UTC")),
        },
        schema=FASHION_SCHEMA,
    )


def ingest_fashion_mnist(
    lake: Lakehouse,
    settings: FashionMnistSettings,
    table_name: str = "fashion_mnist",
    max_rows_per_split: int | None = None,
) -> TableVersion:
    """Ingest both splits into `table_name`; re-running adds nothing already there.

    `max_rows_per_split` (default `settings.max_rows_per_split`) keeps the first rows of each.
    """
    if max_rows_per_split is None:
        max_rows_per_split = settings.max_rows_per_split
    folder, origin = locate_files(settings)
    log.info("Fashion-MNIST files from %s (%s)", folder, origin)
    ingested_at = datetime.now(UTC)
    batches = []
    for split in SPLIT_FILES:
        images, labels = load_split(folder, split, settings.files)
        if max_rows_per_split is not None:
            images, labels = images[:max_rows_per_split], labels[:max_rows_per_split]
        source = f"{origin}:{folder}"
        batches.append(build_rows(images, labels, split, settings.label_names, source, ingested_at))
    rows = pa.concat_tables(batches)
    return lake.insert_new(table_name, rows, key="id", description="Fashion-MNIST images")
