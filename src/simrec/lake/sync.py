"""Sync a Delta table with a source batch by key: insert new rows, update changed ones and
(only when asked) delete the rows the source no longer has, in ONE merge commit.

A row is "changed" when any compared column differs from the table's copy (image bytes are
compared through their `sha256` column, never read back). The commit's metadata carries the
counts (`simrec.inserted`, `simrec.updated`, `simrec.deleted`) plus whatever the caller adds
(e.g. the ingest id and the versions of sibling tables), and the change data feed records each
insert, update pre/post-image and delete, which is what `simrec reindex` reads.

A commit that loses a race with another writer raises `CommitFailedError` (`is_conflict`);
`simrec.lake.transaction` plans again and retries, bounded, then raises `TableConflictError`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake
from deltalake.transaction import CommitProperties

from simrec.lake.tables import CHANGE_DATA_FEED, Lakehouse, TableVersion, _arrow_schema

log = logging.getLogger(__name__)

OP_COLUMN = "_simrec_op"
UPSERT = "upsert"
DELETE = "delete"
COUNT_KEYS = ("inserted", "updated", "deleted")
METADATA_PREFIX = "simrec."


@dataclass(frozen=True)
class TableChanges:
    """What syncing `name` with a source batch would do, planned against `read_version`."""

    name: str
    read_version: int | None  # None: the table does not exist yet (it will be created)
    upserts: pa.Table  # new and changed rows, in the table's column order
    deletes: list[str]  # keys to delete (only when pruning)
    inserted: int
    updated: int

    @property
    def deleted(self) -> int:
        return len(self.deletes)

    @property
    def is_empty(self) -> bool:
        return self.upserts.num_rows == 0 and not self.deletes

    def counts(self) -> dict[str, int]:
        return {"inserted": self.inserted, "updated": self.updated, "deleted": self.deleted}


@dataclass(frozen=True)
class SyncResult:
    table: TableVersion  # the version after the sync (unchanged when nothing changed)
    previous_version: int | None  # before the sync; None when the sync created the table
    inserted: int
    updated: int
    deleted: int

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def version(self) -> int:
        return self.table.version

    @property
    def path(self) -> str:
        return self.table.path

    @property
    def rows_added(self) -> int:
        return self.inserted

    @property
    def committed(self) -> bool:
        return self.previous_version != self.table.version

    def summary(self) -> str:
        return (
            f"{self.table.name}: version {self.table.version}, {self.inserted} inserted, "
            f"{self.updated} updated, {self.deleted} deleted"
        )


def _check_keys(name: str, rows: pa.Table, key: str) -> None:
    if key not in rows.schema.names:
        raise KeyError(f"batch for {name!r} has no key column {key!r}")
    if rows.num_rows and pc.count_distinct(rows.column(key)).as_py() != rows.num_rows:
        raise ValueError(f"batch for {name!r} repeats values of key column {key!r}")


def _conform(name: str, rows: pa.Table, schema: pa.Schema) -> pa.Table:
    if set(rows.schema.names) != set(schema.names):
        raise ValueError(
            f"batch columns {sorted(rows.schema.names)} do not match table {name!r} "
            f"columns {sorted(schema.names)}"
        )
    return rows.select(schema.names).cast(schema)


def plan_changes(
    lake: Lakehouse,
    name: str,
    rows: pa.Table,
    key: str,
    compare: Sequence[str],
    prune: bool,
) -> TableChanges:
    """Compare `rows` with the latest version of table `name` by `key` and the `compare`
    columns. Nothing is written; a batch that does not fit the table fails here."""
    _check_keys(name, rows, key)
    if not lake.exists(name):
        return TableChanges(name, None, rows, [], rows.num_rows, 0)
    table = lake.table(name)
    schema = _arrow_schema(table)
    rows = _conform(name, rows, schema)
    columns = list(dict.fromkeys([key, *compare]))
    current = lake.read(name, table.version(), columns=columns)
    existing = {row[key]: tuple(row[column] for column in compare) for row in current.to_pylist()}
    batch = rows.select(columns).to_pylist()
    keep, inserted, updated = [], 0, 0
    for position, row in enumerate(batch):
        if row[key] not in existing:
            keep.append(position)
            inserted += 1
        elif existing[row[key]] != tuple(row[column] for column in compare):
            keep.append(position)
            updated += 1
    upserts = rows.take(pa.array(keep, pa.int64()))
    deletes: list[str] = []
    if prune:
        present = {row[key] for row in batch}
        deletes = sorted(str(value) for value in existing if value not in present)
    return TableChanges(name, table.version(), upserts, deletes, inserted, updated)


def _merge_source(changes: TableChanges, key: str, schema: pa.Schema) -> pa.Table:
    upserts = changes.upserts.append_column(
        OP_COLUMN, pa.array([UPSERT] * changes.upserts.num_rows, pa.string())
    )
    if not changes.deletes:
        return upserts
    deletes = {
        column: pa.nulls(len(changes.deletes), schema.field(column).type) for column in schema.names
    }
    deletes[key] = pa.array(changes.deletes, schema.field(key).type)
    deletes[OP_COLUMN] = pa.array([DELETE] * len(changes.deletes), pa.string())
    return pa.concat_tables([upserts, pa.table(deletes, schema=upserts.schema)])


def _commit_metadata(changes: TableChanges, extra: dict[str, str] | None) -> dict[str, str]:
    counts = {f"{METADATA_PREFIX}{name}": str(value) for name, value in changes.counts().items()}
    return {**counts, **(extra or {})}


def commit_changes(
    lake: Lakehouse,
    changes: TableChanges,
    key: str,
    description: str | None = None,
    metadata: dict[str, str] | None = None,
) -> TableVersion:
    """Write `changes` as one Delta commit (creating the table when it does not exist)."""
    path = str(lake.path(changes.name))
    properties = CommitProperties(custom_metadata=_commit_metadata(changes, metadata))
    if changes.read_version is None:
        lake.root.mkdir(parents=True, exist_ok=True)
        write_deltalake(
            path,
            changes.upserts,
            mode="error",  # a table created meanwhile by another writer fails, and is retried
            configuration=CHANGE_DATA_FEED,
            description=description,
            commit_properties=properties,
        )
        return lake.pin(changes.name)
    table = DeltaTable(path, version=changes.read_version)
    schema = _arrow_schema(table)
    columns = {column: f"s.`{column}`" for column in schema.names}
    is_upsert, is_delete = f"s.{OP_COLUMN} = '{UPSERT}'", f"s.{OP_COLUMN} = '{DELETE}'"
    (
        table.merge(
            source=_merge_source(changes, key, schema),
            predicate=f"t.`{key}` = s.`{key}`",
            source_alias="s",
            target_alias="t",
            commit_properties=properties,
        )
        .when_matched_update(updates=columns, predicate=is_upsert)
        .when_matched_delete(predicate=is_delete)
        .when_not_matched_insert(updates=columns, predicate=is_upsert)
        .execute()
    )
    return TableVersion(changes.name, path, table.version(), changes.inserted, changes.deleted)


def commit_counts(lake: Lakehouse, name: str, version: int | None = None) -> dict[str, object]:
    """The simrec metadata of the commit that wrote `version` (default: latest) of `name`."""
    table = lake.table(name)
    version = table.version() if version is None else version
    for entry in table.history():
        if int(entry.get("version", -1)) == version:
            return {
                key[len(METADATA_PREFIX) :]: value
                for key, value in entry.items()
                if key.startswith(METADATA_PREFIX)
            }
    return {}
