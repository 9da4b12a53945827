"""Lakehouse semantics on real Delta tables: versions, idempotent inserts, pinned reads."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from simrec.lake.tables import Lakehouse, TableMissingError


def _rows(ids: list[str], value: int = 0) -> pa.Table:
    return pa.table({"id": ids, "value": [value] * len(ids)})


def test_insert_new_versions_and_pinned_reads(tmp_path: Path) -> None:
    lake = Lakehouse(tmp_path)
    first = lake.insert_new("things", _rows(["a", "b"]))
    second = lake.insert_new("things", _rows(["b", "c"], value=1))
    assert (first.version, first.rows_added) == (0, 2)
    assert (second.version, second.rows_added) == (1, 1)
    assert sorted(lake.read("things", version=0).column("id").to_pylist()) == ["a", "b"]
    latest = lake.read("things").to_pydict()
    assert sorted(latest["id"]) == ["a", "b", "c"]
    # "b" kept its first value: inserts never overwrite.
    assert dict(zip(latest["id"], latest["value"], strict=True))["b"] == 0


def test_rerun_writes_no_new_version(tmp_path: Path) -> None:
    lake = Lakehouse(tmp_path)
    lake.insert_new("things", _rows(["a", "b"]))
    again = lake.insert_new("things", _rows(["a", "b"]))
    assert again.rows_added == 0
    assert lake.version("things") == 0


def test_wrong_columns_fail_and_leave_the_table_as_it_was(tmp_path: Path) -> None:
    lake = Lakehouse(tmp_path)
    lake.insert_new("things", _rows(["a"]))
    with pytest.raises(ValueError, match="do not match"):
        lake.insert_new("things", pa.table({"id": ["z"], "colour": ["red"]}))
    with pytest.raises(ValueError, match="repeats"):
        lake.insert_new("things", _rows(["x", "x"]))
    assert lake.version("things") == 0
    assert lake.read("things").column("id").to_pylist() == ["a"]


def test_change_data_feed_is_enabled(tmp_path: Path) -> None:
    lake = Lakehouse(tmp_path)
    lake.insert_new("things", _rows(["a"]))
    lake.insert_new("things", _rows(["b"]))
    changes = lake.table("things").load_cdf(starting_version=1).read_all()
    assert changes.column("id").to_pylist() == ["b"]
    assert set(changes.column("_change_type").to_pylist()) == {"insert"}


def test_missing_table_and_column_errors_are_clear(tmp_path: Path) -> None:
    lake = Lakehouse(tmp_path)
    with pytest.raises(TableMissingError, match="simrec ingest"):
        lake.read("nothing")
    lake.insert_new("things", _rows(["a"]))
    with pytest.raises(KeyError, match="no column"):
        lake.read("things", columns=["colour"])
