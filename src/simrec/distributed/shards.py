"""Each rank's shard of a Delta snapshot, streamed: which row groups it reads, which rows it keeps.

The unit of I/O is a parquet row group of the pinned snapshot (`Lakehouse.file_uris`). When the
snapshot has at least as many row groups as ranks, each rank reads only its own row groups. When
it has fewer (delta-rs writes a 70k-row commit as one file holding one row group), every rank
streams all of them and keeps the rows whose id hashes to its rank: disjoint shards that cover
the split whatever the file layout.

Two readers stream a shard: pyarrow (`ParquetFile.iter_batches` over the rank's row groups) and
Petastorm (`make_batch_reader` with `cur_shard`/`shard_count`, which picks the row groups itself).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from simrec.lake.tables import Lakehouse, TableVersion
from simrec.model.data import validation_mask

Reader = Literal["pyarrow", "petastorm"]
INDEX_COLUMNS = ["id", "split", "label"]  # small columns: planning reads these, never images
_PLANNING_BATCH_ROWS = 65536


@dataclass(frozen=True)
class RowGroup:
    path: str
    index: int
    rows: int


@dataclass(frozen=True)
class RowFilter:
    """Which streamed rows are training / validation rows: the same choice as `train()` makes
    (train split, minus held-out classes, first `max_rows` by id, validation by id hash)."""

    split: str = "train"
    validation_fraction: float = 0.1
    holdout_classes: tuple[int, ...] = ()
    max_id: str | None = None

    def split_rows(self, ids: np.ndarray, splits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        keep = splits == self.split
        if self.holdout_classes:
            keep &= ~np.isin(labels, self.holdout_classes)
        if self.max_id is not None:
            keep &= ids <= self.max_id
        return keep

    def training(self, ids: np.ndarray, splits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        keep = self.split_rows(ids, splits, labels)
        return keep & ~validation_mask(ids, self.validation_fraction)

    def validation(self, ids: np.ndarray, splits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        keep = self.split_rows(ids, splits, labels)
        return keep & validation_mask(ids, self.validation_fraction)


@dataclass(frozen=True)
class Shard:
    """What one rank streams.

    `row_groups` are the groups its reader is given; with `by_row_group` the reader reads only
    this rank's (pyarrow: they are already only this rank's; Petastorm: `cur_shard` picks them),
    otherwise it reads them all and keeps the rows whose id hashes to `rank`.
    """

    rank: int
    count: int
    row_groups: tuple[RowGroup, ...]
    by_row_group: bool
    reader: Reader = "pyarrow"

    def owns(self, ids: np.ndarray) -> np.ndarray:
        if self.by_row_group or self.count == 1:
            return np.ones(len(ids), dtype=bool)
        return shard_of(ids, self.count) == self.rank


@dataclass(frozen=True)
class ShardPlan:
    shard: Shard
    training_rows: int
    classes: tuple[int, ...]


def shard_of(ids: np.ndarray, count: int) -> np.ndarray:
    """A stable rank for each id, from bytes of its sha256 that `validation_mask` does not use."""
    return np.array(
        [
            int.from_bytes(hashlib.sha256(str(row_id).encode()).digest()[4:8], "big") % count
            for row_id in ids
        ],
        dtype=np.int64,
    )


def snapshot_row_groups(lake: Lakehouse, table: TableVersion) -> list[RowGroup]:
    """The row groups of the parquet files of `table` at its pinned version (footers only)."""
    groups = []
    for path in lake.file_uris(table.name, table.version):
        metadata = pq.ParquetFile(path).metadata
        groups.extend(
            RowGroup(path, index, metadata.row_group(index).num_rows)
            for index in range(metadata.num_row_groups)
        )
    if not groups:
        raise ValueError(f"table {table.name!r} v{table.version} has no data files")
    return groups


def assign_row_groups(row_groups: list[RowGroup], count: int) -> list[tuple[RowGroup, ...]]:
    """Row groups per rank, balanced by rows (largest first, to the least-loaded rank)."""
    loads = [0] * count
    assigned: list[list[RowGroup]] = [[] for _ in range(count)]
    for group in sorted(row_groups, key=lambda g: (-g.rows, g.path, g.index)):
        rank = loads.index(min(loads))
        assigned[rank].append(group)
        loads[rank] += group.rows
    return [tuple(sorted(groups, key=lambda g: (g.path, g.index))) for groups in assigned]


def make_shards(row_groups: list[RowGroup], count: int, reader: Reader = "pyarrow") -> list[Shard]:
    by_row_group = len(row_groups) >= count
    if by_row_group and reader == "pyarrow":
        groups_per_rank = assign_row_groups(row_groups, count)
    else:
        groups_per_rank = [tuple(row_groups)] * count
    return [
        Shard(rank, count, groups, by_row_group, reader)
        for rank, groups in enumerate(groups_per_rank)
    ]


def plan_shards(shards: list[Shard], row_filter: RowFilter) -> list[ShardPlan]:
    """Training rows and classes of each shard, read the way the rank will read it (small
    columns only), so every rank can be told the same number of steps before it starts."""
    plans = []
    for shard in shards:
        rows, classes = 0, set()
        for columns in stream_columns(shard, INDEX_COLUMNS, _PLANNING_BATCH_ROWS):
            keep = row_filter.training(columns["id"], columns["split"], columns["label"])
            rows += int(keep.sum())
            classes.update(int(label) for label in np.unique(columns["label"][keep]))
        plans.append(ShardPlan(shard, rows, tuple(sorted(classes))))
    return plans


def first_rows_max_id(row_groups: list[RowGroup], split: str, max_rows: int) -> str:
    """The largest id among the first `max_rows` rows of `split` by id (`train.max_rows`)."""
    everything = Shard(0, 1, tuple(row_groups), by_row_group=True)
    ids = [
        columns["id"][columns["split"] == split]
        for columns in stream_columns(everything, ["id", "split"], _PLANNING_BATCH_ROWS)
    ]
    ordered = np.sort(np.concatenate(ids)) if ids else np.zeros(0, dtype=object)
    if len(ordered) == 0:
        raise ValueError(f"no {split!r} rows in the table")
    return str(ordered[min(max_rows, len(ordered)) - 1])


def stream_columns(
    shard: Shard, columns: list[str], batch_rows: int, seed: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the rows the shard owns, at most `batch_rows` at a time, as numpy columns.

    `seed` shuffles the order of the row groups (None: file order).
    """
    wanted = columns if "id" in columns else ["id", *columns]
    if shard.reader == "petastorm":
        stream = _stream_petastorm(shard, wanted, batch_rows, seed)
    else:
        stream = _stream_pyarrow(shard, wanted, batch_rows, seed)
    for batch in stream:
        owned = shard.owns(batch["id"])
        if owned.all():
            yield batch
        elif owned.any():
            yield {name: values[owned] for name, values in batch.items()}


def training_stream(
    shard: Shard, row_filter: RowFilter, batch_rows: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(PNG bytes, labels) of the shard's training rows, pass after pass, forever; each pass
    visits the row groups in a new order."""
    for pass_number in itertools.count():
        for columns in stream_columns(
            shard, [*INDEX_COLUMNS, "image"], batch_rows, seed=seed + pass_number
        ):
            keep = row_filter.training(columns["id"], columns["split"], columns["label"])
            if keep.any():
                yield columns["image"][keep], columns["label"][keep]


def _stream_pyarrow(
    shard: Shard, columns: list[str], batch_rows: int, seed: int | None
) -> Iterator[dict[str, np.ndarray]]:
    groups = list(shard.row_groups)
    if seed is not None:
        groups = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    for group in groups:
        batches = pq.ParquetFile(group.path).iter_batches(
            batch_size=batch_rows, row_groups=[group.index], columns=columns
        )
        for batch in batches:
            yield _as_numpy(batch)


def _stream_petastorm(
    shard: Shard, columns: list[str], batch_rows: int, seed: int | None
) -> Iterator[dict[str, np.ndarray]]:
    """Petastorm's batch reader over the snapshot's files, on the dummy pool (STACK.md: the
    thread pool once returned 0 rows silently). It yields whole row groups; they are re-sliced
    here to `batch_rows` so both readers hand the batcher the same-sized pieces."""
    from petastorm import make_batch_reader

    urls = sorted({_as_url(group.path) for group in shard.row_groups})
    sharding = (
        {"cur_shard": shard.rank, "shard_count": shard.count}
        if shard.by_row_group and shard.count > 1
        else {}
    )
    with make_batch_reader(
        urls,
        schema_fields=columns,
        reader_pool_type="dummy",
        num_epochs=1,
        shuffle_row_groups=seed is not None,
        seed=seed,
        **sharding,
    ) as reader:
        for batch in reader:
            table = {name: _column(getattr(batch, name)) for name in columns}
            for start in range(0, len(table["id"]), batch_rows):
                yield {name: values[start : start + batch_rows] for name, values in table.items()}


def _as_url(path: str) -> str:
    return path if "://" in path else f"file://{path}"


def _column(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    return values.astype(np.int64) if np.issubdtype(values.dtype, np.integer) else values


def _as_numpy(batch: pa.RecordBatch) -> dict[str, np.ndarray]:
    columns = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if pa.types.is_integer(column.type):
            columns[name] = column.to_numpy().astype(np.int64)
        else:
            columns[name] = np.asarray(column.to_pylist(), dtype=object)
    return columns
