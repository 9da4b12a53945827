"""Delta tables on a lakehouse root: create, insert-only merge, deletes by key, the change
data feed, and reads pinned to a version.

Written and read with delta-rs (`deltalake`). Reads go through the parquet files of the pinned
snapshot (`file_uris()`), never `to_pyarrow_table()`, which makes the process abort at exit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, Schema, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions

CHANGE_DATA_FEED = {"delta.enableChangeDataFeed": "true"}
CHANGE_TYPE = "_change_type"
COMMIT_VERSION = "_commit_version"


class TableMissingError(LookupError):
    """The named Delta table does not exist under the lakehouse root."""


class ChangeFeedError(RuntimeError):
    """The change data feed of a table cannot be read for the versions asked for."""


class TableConflictError(RuntimeError):
    """Another writer committed to the table first; nothing of this write was committed."""


def is_conflict(error: Exception) -> bool:
    """A lost commit race: a concurrent commit, or a table created meanwhile by another writer."""
    if isinstance(error, CommitFailedError):
        return True
    return isinstance(error, DeltaError) and "already exists" in str(error).lower()


def conflict_error(name: str, path: str, error: Exception) -> TableConflictError:
    return TableConflictError(
        f"table {name!r} ({path}) was changed by another writer during this write, so nothing "
        f"was committed ({type(error).__name__}); run it again once the other writer is done"
    )


@dataclass(frozen=True)
class TableVersion:
    """A table pinned at one version: what lineage records and readers ask for."""

    name: str
    path: str
    version: int
    rows_added: int = 0
    rows_removed: int = 0
    table_id: str | None = None  # Delta `metadata().id`: a re-created table gets a new one

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "path": self.path, "version": self.version, "id": self.table_id}


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
        return TableVersion(
            name=name,
            path=str(self.path(name)),
            version=table.version(),
            table_id=table.metadata().id,
        )

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
            try:
                write_deltalake(
                    path,
                    rows,
                    mode="error",
                    configuration=CHANGE_DATA_FEED,
                    description=description,
                )
                return TableVersion(name, path, DeltaTable(path).version(), rows.num_rows)
            except DeltaError as error:
                if not is_conflict(error):
                    raise
                # another writer created it first: insert what it does not have, below
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
        try:
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
        except (CommitFailedError, DeltaError) as error:
            if is_conflict(error):
                raise conflict_error(name, path, error) from error
            raise
        return TableVersion(name, path, table.version(), new_rows.num_rows)

    def delete(self, name: str, keys: list[str], key: str = "id") -> TableVersion:
        """Delete the rows whose `key` is in `keys`, in one Delta commit.

        Keys not in the table are ignored; when none is present no version is written (so a
        re-run changes nothing). The change data feed records each deleted row.
        """
        keys = [str(value) for value in keys]
        table = self.table(name)
        schema = _arrow_schema(table)
        if key not in schema.names:
            raise KeyError(f"table {name!r} has no key column {key!r}; has {schema.names}")
        if not pa.types.is_string(schema.field(key).type):
            raise TypeError(
                f"key column {key!r} of {name!r} is {schema.field(key).type}, not string"
            )
        path = str(self.path(name))
        existing = set(self.read(name, columns=[key]).column(key).to_pylist())
        present = sorted(set(keys) & existing)
        if not present:
            return TableVersion(name, path, table.version(), rows_removed=0)
        listed = ", ".join(_sql_string(value) for value in present)
        try:
            metrics = table.delete(f'"{key}" IN ({listed})')
        except (CommitFailedError, DeltaError) as error:
            if is_conflict(error):
                raise conflict_error(name, path, error) from error
            raise
        return TableVersion(name, path, table.version(), rows_removed=metrics["num_deleted_rows"])

    def changes(
        self,
        name: str,
        starting_version: int,
        ending_version: int | None = None,
        columns: list[str] | None = None,
    ) -> pa.Table:
        """The change data feed from `starting_version` to `ending_version` (default: latest),
        both included: the asked-for columns plus `_change_type` (insert, delete,
        update_preimage, update_postimage) and `_commit_version`. Rows are in no set order.
        """
        table = self.table(name)
        latest = table.version()
        ending_version = latest if ending_version is None else ending_version
        if starting_version < 0 or ending_version > latest:
            raise ChangeFeedError(
                f"table {name!r} has versions 0 to {latest}; asked for changes from "
                f"{starting_version} to {ending_version}"
            )
        configuration = table.metadata().configuration
        if configuration.get("delta.enableChangeDataFeed", "false").lower() != "true":
            raise ChangeFeedError(
                f"table {name!r} was created without delta.enableChangeDataFeed=true, so its "
                f"changes cannot be read"
            )
        schema = _arrow_schema(table)
        if columns is not None:
            unknown = [column for column in columns if column not in schema.names]
            if unknown:
                raise KeyError(f"table {name!r} has no column(s) {unknown}; has {schema.names}")
        wanted = [*(columns if columns is not None else schema.names), CHANGE_TYPE, COMMIT_VERSION]
        if starting_version > ending_version:
            empty = schema.empty_table().select(wanted[:-2])
            return empty.append_column(CHANGE_TYPE, pa.array([], pa.string())).append_column(
                COMMIT_VERSION, pa.array([], pa.int64())
            )
        try:
            reader = table.load_cdf(
                starting_version=starting_version, ending_version=ending_version, columns=wanted
            )
            return pa.table(reader)
        except (DeltaError, OSError) as error:
            raise ChangeFeedError(
                f"cannot read the change data feed of {name!r} from version {starting_version} "
                f"to {ending_version} (were its files vacuumed?): {error}"
            ) from error

    def replace_with_files(
        self,
        name: str,
        files: list[Path],
        schema: pa.Schema,
        description: str | None = None,
        commit_metadata: dict[str, str] | None = None,
    ) -> TableVersion:
        """Make `files` (parquet files already written under the table's folder, e.g. by Spark
        executors) the whole content of table `name`, in one Delta commit.

        Readers see the previous version or the new one, never a mix; earlier versions stay
        readable by time travel. The table is created (with the change data feed on) if needed.
        """
        folder = self.path(name)
        actions = []
        rows = 0
        for file in files:
            file = Path(file).resolve()
            if folder.resolve() not in file.parents:
                raise ValueError(f"{file} is not under the table folder {folder}")
            metadata = pq.ParquetFile(file).metadata
            written = metadata.schema.to_arrow_schema()
            if [(f.name, f.type) for f in written] != [(f.name, f.type) for f in schema]:
                raise ValueError(f"{file} has columns {written}, expected {schema}")
            rows += metadata.num_rows
            stat = file.stat()
            actions.append(
                AddAction(
                    path=file.relative_to(folder.resolve()).as_posix(),
                    size=stat.st_size,
                    partition_values={},
                    modification_time=int(stat.st_mtime * 1000),
                    data_change=True,
                    stats=json.dumps({"numRecords": metadata.num_rows}),
                )
            )
        self.root.mkdir(parents=True, exist_ok=True)
        # delta-rs's create_write_transaction does not remove the old files when overwriting;
        # this "create or replace" commit does (a new table id, same history).
        create_table_with_add_actions(
            str(folder),
            Schema.from_arrow(schema),
            actions,
            mode="overwrite",
            description=description,
            configuration=CHANGE_DATA_FEED,
            commit_properties=CommitProperties(custom_metadata=commit_metadata),
        )
        return TableVersion(name, str(folder), self.version(name), rows_added=rows)

    def history(self, name: str) -> list[dict[str, object]]:
        return self.table(name).history()


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _arrow_schema(table: DeltaTable) -> pa.Schema:
    return pa.schema(table.schema().to_arrow())
