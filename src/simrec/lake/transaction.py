"""All-or-nothing sync of several related Delta tables (the catalog's items, rooms and
item-room pairs).

Delta commits are per table, so "one transaction" here means: every table's changes are planned
(and so validated against its schema) before the first commit; the tables are then committed
one after another, each commit carrying the ingest id and the versions of all of them
(`simrec.ingest_id`, `simrec.catalog_versions`), so a reader pins a triple that belongs
together; and when a later commit fails, the tables already committed are restored to the
versions they had before (`DeltaTable.restore`, itself a commit that the change data feed
records), and a table this ingest created is removed again.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.transaction import CommitProperties

from simrec.lake.sync import (
    METADATA_PREFIX,
    SyncResult,
    TableChanges,
    commit_changes,
    plan_changes,
)
from simrec.lake.tables import Lakehouse, TableConflictError, is_conflict

log = logging.getLogger(__name__)

INGEST_ID = f"{METADATA_PREFIX}ingest_id"
VERSIONS = f"{METADATA_PREFIX}catalog_versions"
ROLLBACK_OF = f"{METADATA_PREFIX}rollback_of"


class IngestCommitError(RuntimeError):
    """A commit of a multi-table ingest failed; the tables were put back as they were."""


@dataclass(frozen=True)
class TableSync:
    """One table of a multi-table sync: its name, the source rows and how to compare them."""

    role: str  # e.g. "items"; the key in the recorded versions
    name: str
    rows: pa.Table
    key: str
    compare: Sequence[str]
    description: str


def _planned_version(changes: TableChanges) -> int:
    if changes.read_version is None:
        return 0
    return changes.read_version + (0 if changes.is_empty else 1)


def _undo(lake: Lakehouse, done: list[tuple[TableChanges, int]], ingest_id: str) -> None:
    """Put every committed table back at its version before this ingest, newest first."""
    for changes, written in reversed(done):
        path = lake.path(changes.name)
        if changes.read_version is None:
            log.warning("removing %s, created by the failed ingest %s", path, ingest_id)
            shutil.rmtree(path)
            continue
        table = DeltaTable(str(path))
        if table.version() != written:
            raise IngestCommitError(
                f"cannot roll back table {changes.name!r}: another writer committed version "
                f"{table.version()} after this ingest's version {written}; restore it by hand "
                f"to version {changes.read_version} if needed"
            )
        table.restore(
            changes.read_version,
            commit_properties=CommitProperties(custom_metadata={ROLLBACK_OF: ingest_id}),
        )
        log.warning("restored %s to version %d", changes.name, changes.read_version)


def _commit_with_retries(
    lake: Lakehouse,
    table: TableSync,
    changes: TableChanges,
    metadata: dict[str, str],
    prune: bool,
    retries: int,
    retry_wait_s: float,
) -> tuple[TableChanges, int]:
    """Commit `changes`; after a lost race, plan this table again and retry (bounded)."""
    for attempt in range(retries + 1):
        try:
            return changes, commit_changes(
                lake, changes, table.key, table.description, metadata
            ).version
        except (CommitFailedError, DeltaError) as error:
            if not is_conflict(error):
                raise
            if attempt == retries:
                raise TableConflictError(
                    f"table {table.name!r} ({lake.path(table.name)}) kept changing under "
                    f"another writer ({retries + 1} attempts); every table of this ingest was "
                    f"put back as it was: run it again once the other ingest or re-index is done"
                ) from error
            log.warning("commit to %s lost a race with another writer; retrying", table.name)
            time.sleep(retry_wait_s * (attempt + 1))
            changes = plan_changes(lake, table.name, table.rows, table.key, table.compare, prune)
    raise AssertionError("unreachable")  # the loop returns or raises


def sync_tables(
    lake: Lakehouse,
    tables: Sequence[TableSync],
    prune: bool,
    retries: int,
    retry_wait_s: float,
) -> dict[str, SyncResult]:
    """Sync every table or none; see the module docstring. Returns role -> result."""
    plans = [
        plan_changes(lake, table.name, table.rows, table.key, table.compare, prune)
        for table in tables
    ]
    ingest_id = uuid.uuid4().hex
    versions = {
        table.role: _planned_version(changes) for table, changes in zip(tables, plans, strict=True)
    }
    results: dict[str, SyncResult] = {}
    done: list[tuple[TableChanges, int]] = []
    for table, changes in zip(tables, plans, strict=True):
        if changes.is_empty:
            pinned = lake.pin(table.name)
            results[table.role] = SyncResult(pinned, pinned.version, 0, 0, 0)
            continue
        metadata = {INGEST_ID: ingest_id, VERSIONS: json.dumps(versions, sort_keys=True)}
        try:
            changes, written = _commit_with_retries(
                lake, table, changes, metadata, prune, retries, retry_wait_s
            )
        except TableConflictError:
            _undo(lake, done, ingest_id)
            raise
        except Exception as error:
            _undo(lake, done, ingest_id)
            raise IngestCommitError(
                f"committing table {table.name!r} failed ({error}); every table of this ingest "
                f"was put back as it was"
            ) from error
        done.append((changes, written))
        versions[table.role] = written
        results[table.role] = SyncResult(
            lake.pin(table.name, written), changes.read_version, *changes.counts().values()
        )
    return results


def ingest_versions(lake: Lakehouse, names: dict[str, str]) -> dict[str, int] | None:
    """The table versions (role -> version) written together by the newest multi-table ingest
    that touched any of `names` (role -> table name), or None when none recorded them."""
    newest: tuple[int, dict[str, int]] | None = None
    for name in names.values():
        if not lake.exists(name):
            continue
        rolled_back: set[str] = set()
        for entry in lake.table(name).history():  # newest first
            if ROLLBACK_OF in entry:
                rolled_back.add(str(entry[ROLLBACK_OF]))
            elif VERSIONS in entry and entry.get(INGEST_ID) not in rolled_back:
                stamp = int(entry.get("timestamp", 0))
                if newest is None or stamp > newest[0]:
                    newest = (stamp, {k: int(v) for k, v in json.loads(entry[VERSIONS]).items()})
                break
    return newest[1] if newest is not None else None
