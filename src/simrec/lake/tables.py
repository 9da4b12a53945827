"""Delta tables on a lakehouse root: create, insert-only merge, and reads pinned to a version.

Written and read with delta-rs (`deltalake`). Reads go through the parquet files of the pinned
snapshot (`file_uris()`), never `to_pyarrow_table()`, which makes the process abort at exit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

CHANGE_DATA_FEED = {"delta.enableChangeDataFeed": "true"}


class TableMissingError(LookupError):
    """The named Delta table does not exist under the lakehouse root."""


@dataclass(frozen=True)
class TableVersion:
    """A table pinned at one version: what lineage records and readers ask for."""

    name: str
    path: str
    version: int
    rows_added: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "path": self.path, "version": self.version}


class Lakehouse:
    """A folder of Delta tables, one sub-folder per table name."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def path(self, name: str) -> Path:
        return self.root / name

    def exists(self, name: str) -> bool:
        return DeltaTable.is_deltatable(str(self.path(name)))

    def table(self, name: str, version: int | None = None) -> DeltaTable:
        try:
            return DeltaTable(str(self.path(name)), version=version)
        except TableNotFoundError as error:
            raise TableMissingError(
                f"no Delta table {name!r} under {self.root}; run the matching `simrec ingest` first"
            ) from error

    def version(self, name: str) -> int:
        return self.table(name).version()

    def pin(self, name: str, version: int | None = None) -> TableVersion:
        """The table at `version` (default: latest), checked to exist."""
        table = self.table(name, version)
        return TableVersion(name=name, path=str(self.path(name)), version=table.version())

    def file_uris(self, name: str, version: int | None = None) -> list[str]:
        return self.table(name, version).file_uris()

    def read(
        self,
        name: str,
        version: int | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """The rows of `name` at `version` (default: latest), optionally only some columns."""
        table = self.table(name, version)
        files = table.file_uris()
        schema = _arrow_schema(table)
        if columns is not None:
            unknown = [column for column in columns if column not in schema.names]
            if unknown:
                raise KeyError(f"table {name!r} has no column(s) {unknown}; has {schema.names}")
        if not files:
            empty = schema.empty_table()
            return empty.select(columns) if columns is not None else empty
        return pq.read_table(files, columns=columns, schema=schema)

    def insert_new(
        self,
        name: str,
        rows: pa.Table,
        key: str = "id",
        description: str | None = None,
    ) -> TableVersion:
        """Insert the rows whose `key` is not in the table yet (creating it if needed).

        Idempotent: rows already present are skipped, and when nothing is new no version is
        written. Each call is one Delta commit, so a failure leaves the table as it was.
        """
        if rows.num_rows and len(set(rows.column(key).to_pylist())) != rows.num_rows:
            raise ValueError(f"batch for {name!r} repeats values of key column {key!r}")
        path = str(self.path(name))
        if not self.exists(name):
            self.root.mkdir(parents=True, exist_ok=True)
            write_deltalake(
                path,
                rows,
                mode="error",
                configuration=CHANGE_DATA_FEED,
                description=description,
            )
            return TableVersion(name, path, DeltaTable(path).version(), rows.num_rows)
        existing = set(self.read(name, columns=[key]).column(key).to_pylist())
        new_mask = pa.array([value not in existing for value in rows.column(key).to_pylist()])
        new_rows = rows.filter(new_mask)
        table = self.table(name)
        if new_rows.num_rows == 0:
            return TableVersion(name, path, table.version(), 0)
        target_schema = _arrow_schema(table)
        if set(new_rows.schema.names) != set(target_schema.names):
            raise ValueError(
                f"batch columns {sorted(new_rows.schema.names)} do not match table {name!r} "
                f"columns {sorted(target_schema.names)}"
            )
        new_rows = new_rows.select(target_schema.names).cast(target_schema)
        # Merge rather than append: a concurrent writer that inserted the same keys in between
        # still cannot create duplicates.
        (
            table.merge(
                source=new_rows,
                predicate=f"t.{key} = s.{key}",
                source_alias="s",
                target_alias="t",
            )
            .when_not_matched_insert_all()
            .execute()
        )
        return TableVersion(name, path, table.version(), new_rows.num_rows)

    def history(self, name: str) -> list[dict[str, object]]:
        return self.table(name).history()


def _arrow_schema(table: DeltaTable) -> pa.Schema:
    return pa.schema(table.schema().to_arrow())
