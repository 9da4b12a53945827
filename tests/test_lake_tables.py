"""Lakehouse semantics on real Delta tables: versions, idempotent inserts and deletes, pinned
reads, the change data feed and its net effect, and committing files written elsewhere."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import write_deltalake

from simrec.lake.changes import net_changes
from simrec.lake.tables import ChangeFeedError, Lakehouse, TableMissingError


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


def test_delete_is_one_version_recorded_in_the_change_feed(tmp_path: Path) -> None:
    lake = Lakehouse(tmp_path)
    lake.insert_new("things", _rows(["a", "b", "c"]))
    deleted = lake.delete("things", ["a", "c", "not-there"])
    assert (deleted.version, deleted.rows_removed) == (1, 2)
    assert lake.read("things").column("id").to_pylist() == ["b"]
    assert sorted(lake.read("things", version=0).column("id").to_pylist()) == ["a", "b", "c"]
    changes = lake.changes("things", 1, columns=["id"])
    assert sorted(changes.column("id").to_pylist()) == ["a", "c"]
    assert set(changes.column("_change_type").to_pylist()) == {"delete"}
    # Nothing left to delete: no new version, like insert_new.
    again = lake.delete("things", ["a", "c"])
    assert (again.version, again.rows_removed) == (1, 0)
    assert lake.version("things") == 1


def test_delete_quotes_keys_and_reports_bad_input(tmp_path: Path) -> None:
    lake = Lakehouse(tmp_path)
    with pytest.raises(TableMissingError):
        lake.delete("nothing", ["a"])
    lake.insert_new("things", _rows(["it's", "plain"]))
    assert lake.delete("things", ["it's"]).rows_removed == 1
    assert lake.read("things").column("id").to_pylist() == ["plain"]
    with pytest.raises(KeyError, match="no key column"):
        lake.delete("things", ["plain"], key="colour")
    with pytest.raises(TypeError, match="not string"):
        lake.delete("things", ["0"], key="value")


def test_changes_cover_a_version_range_and_refuse_what_is_not_there(tmp_path: Path) -> None:
    lake = Lakehouse(tmp_path)
    lake.insert_new("things", _rows(["a"]))
    lake.insert_new("things", _rows(["b"]))
    lake.insert_new("things", _rows(["c"]))
    assert lake.changes("things", 1, 1).column("id").to_pylist() == ["b"]
    assert sorted(lake.changes("things", 1).column("id").to_pylist()) == ["b", "c"]
    empty = lake.changes("things", 3, columns=["id"])  # after the latest: nothing changed
    assert empty.num_rows == 0 and empty.column_names == ["id", "_change_type", "_commit_version"]
    with pytest.raises(ChangeFeedError, match="versions 0 to 2"):
        lake.changes("things", 1, 5)
    with pytest.raises(KeyError, match="no column"):
        lake.changes("things", 1, columns=["colour"])
    write_deltalake(str(tmp_path / "plain"), _rows(["a"]))  # created without the change feed
    with pytest.raises(ChangeFeedError, match="enableChangeDataFeed"):
        lake.changes("plain", 0)


def test_net_changes_keep_each_keys_last_state(tmp_path: Path) -> None:
    lake = Lakehouse(tmp_path)
    lake.insert_new("things", _rows(["a", "b", "c", "d"]))  # v0
    lake.insert_new("things", _rows(["e"]))  # v1: e inserted
    lake.table("things").update(updates={"value": "7"}, predicate="id = 'b'")  # v2: b updated
    lake.delete("things", ["c", "e"])  # v3: c and e deleted
    lake.insert_new("things", _rows(["c"], value=9))  # v4: c back with a new value
    net = net_changes(lake.changes("things", 1), first_version=1, last_version=4)
    assert net.touched == ["b", "c", "e"]
    assert net.absent == ["e"]
    assert net.present.to_pydict() == {"id": ["b", "c"], "value": [7, 9]}


def test_replace_with_files_commits_written_parts_as_one_version(tmp_path: Path) -> None:
    lake = Lakehouse(tmp_path)
    schema = pa.schema([("id", pa.string()), ("value", pa.int64())])

    def parts(folder: str, batches: list[list[str]]) -> list[Path]:
        (lake.path("out") / folder).mkdir(parents=True, exist_ok=True)
        files = []
        for number, ids in enumerate(batches):
            file = lake.path("out") / folder / f"part-{number}.parquet"
            pq.write_table(_rows(ids).cast(schema), file)
            files.append(file)
        return files

    first = lake.replace_with_files(
        "out", parts("run-1", [["a", "b"], ["c"]]), schema, commit_metadata={"simrec.k": "5"}
    )
    assert (first.version, first.rows_added) == (0, 3)
    assert lake.history("out")[0]["simrec.k"] == "5"
    second = lake.replace_with_files("out", parts("run-2", [["x"]]), schema)
    assert second.version == 1
    assert lake.read("out").column("id").to_pylist() == ["x"]  # replaced, not appended
    assert sorted(lake.read("out", version=0).column("id").to_pylist()) == ["a", "b", "c"]
    outside = tmp_path / "elsewhere.parquet"
    pq.write_table(_rows(["z"]), outside)
    with pytest.raises(ValueError, match="not under the table folder"):
        lake.replace_with_files("out", [outside], schema)
    with pytest.raises(ValueError, match="expected"):
        lake.replace_with_files("out", parts("run-3", [["y"]]), pa.schema([("id", pa.string())]))
    assert lake.version("out") == 1
