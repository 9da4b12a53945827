"""Labelled image arrays from a Delta table at a pinned version, and the deterministic splits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simrec.images import decode_batch
from simrec.lake.tables import Lakehouse, TableVersion
from simrec.progress import progress


@dataclass
class LabelledImages:
    """Rows of an image table: ids, integer labels and uint8 pixels (N, H, W, C)."""

    ids: np.ndarray
    labels: np.ndarray
    pixels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, mask: np.ndarray) -> LabelledImages:
        return LabelledImages(self.ids[mask], self.labels[mask], self.pixels[mask])


def validation_mask(ids: np.ndarray, fraction: float) -> np.ndarray:
    """True for rows held out for validation: a stable hash of the id, not the row order."""
    buckets = np.array(
        [
            int.from_bytes(hashlib.sha256(str(row_id).encode()).digest()[:4], "big")
            for row_id in ids
        ],
        dtype=np.uint64,
    )
    return buckets < np.uint64(fraction * 2**32)


def read_split(
    lake: Lakehouse,
    table: TableVersion,
    split: str,
    image_size: int,
    channels: int,
    max_rows: int | None = None,
    label_column: str = "label",
) -> LabelledImages:
    """Decode the `split` rows of `table` (at its pinned version) into arrays."""
    rows = lake.read(table.name, table.version, columns=["id", "split", label_column, "image"])
    rows = rows.filter(pc.equal(rows.column("split"), split)).sort_by("id")
    if max_rows is not None:
        rows = rows.slice(0, max_rows)
    return decode_rows(rows, image_size, channels, label_column, desc=f"decoding {split}")


def decode_rows(
    rows: pa.Table,
    image_size: int,
    channels: int,
    label_column: str = "label",
    desc: str = "decoding",
) -> LabelledImages:
    images = rows.column("image").to_pylist()
    bar = progress(images, desc=desc, unit="img", leave=False)
    pixels = decode_batch(bar, image_size, channels)
    return LabelledImages(
        ids=np.asarray(rows.column("id").to_pylist(), dtype=object),
        labels=np.asarray(rows.column(label_column).to_pylist(), dtype=np.int64),
        pixels=pixels,
    )
