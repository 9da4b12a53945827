"""Catalog sync on real Delta tables from a small copy of the real IKEA dataset: updates and
deletes by id and sha256 in one commit per table, all three tables or none, versions recorded
together, and two real processes writing at once."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from test_catalog_ingest import (
    BED_IN_TWO_DIFFERENT,
    DEFAULTS,
    MIRROR_KEY,
    SOFA_KEY,
    SUBSET_IDS,
    _copy_subset,
    _ingest,
    _rows,
    _valid_jpeg,
    _versions,
)
from typer.testing import CliRunner

from simrec.cli import app
from simrec.lake import transaction
from simrec.lake.sync import commit_counts
from simrec.lake.tables import Lakehouse
from simrec.lake.transaction import VERSIONS, IngestCommitError, ingest_versions

IKEA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ikea"
NAMES = {
    "items": DEFAULTS.lake.items_table,
    "rooms": DEFAULTS.lake.rooms_table,
    "item_rooms": DEFAULTS.lake.item_rooms_table,
}

pytestmark = pytest.mark.skipif(
    not (IKEA_DIR / "images").is_dir(), reason=f"IKEA dataset not found at {IKEA_DIR}"
)


@pytest.fixture
def subset(tmp_path: Path) -> Path:
    return _copy_subset(IKEA_DIR, tmp_path / "ikea")


def _rename_product(source: Path, item_id: str, name: str) -> None:
    path = source / "text_data" / "products_dict.p"
    with open(path, "rb") as handle:
        products = pickle.load(handle, encoding="latin1")
    products[item_id] = {**products[item_id], "name": name}
    with open(path, "wb") as handle:
        pickle.dump(products, handle, protocol=2)


def _change(source: Path) -> None:
    """Replace one photo, rename one product, remove one product (every copy of its file)."""
    (source / "images" / "couch" / f"{SOFA_KEY}.jpg").write_bytes(_valid_jpeg(7))
    _rename_product(source, MIRROR_KEY, "RENAMED MIRROR")
    for path in (source / "images").rglob(f"{BED_IN_TWO_DIFFERENT}.*"):
        path.unlink()


def _contents(lake: Lakehouse) -> dict[str, list[dict]]:
    return {
        role: sorted(
            _rows(lake, role, [c for c in _schema(lake, role) if c != "ingested_at"]),
            key=lambda row: row["id"],
        )
        for role in NAMES
    }


def _schema(lake: Lakehouse, role: str) -> list[str]:
    return lake.read(NAMES[role]).schema.names


def test_plain_ingest_updates_and_sync_deletes_in_one_commit_per_table(
    subset: Path, tmp_path: Path
) -> None:
    lake = Lakehouse(tmp_path / "lake")
    first = _ingest(lake, subset)
    pairs_of_removed = [
        r for r in _rows(lake, "item_rooms") if r["item_id"] == BED_IN_TWO_DIFFERENT
    ]
    assert pairs_of_removed, "the removed product appears in rooms"
    _change(subset)

    plain = _ingest(lake, subset)  # updates, never deletes
    assert plain["items"].version == first["items"].version + 1  # one commit for all changes
    assert (plain["items"].inserted, plain["items"].updated, plain["items"].deleted) == (0, 2, 0)
    assert plain["item_rooms"].version == first["item_rooms"].version  # nothing changed there
    items = {row["id"]: row for row in _rows(lake, "items")}
    assert BED_IN_TWO_DIFFERENT in items
    assert items[SOFA_KEY]["image"] == _valid_jpeg(7)
    assert items[MIRROR_KEY]["name"] == "RENAMED MIRROR"
    counts = commit_counts(lake, NAMES["items"])
    assert (counts["inserted"], counts["updated"], counts["deleted"]) == ("0", "2", "0")

    synced = _ingest(lake, subset, prune=True)
    assert synced["items"].version == plain["items"].version + 1
    assert (synced["items"].inserted, synced["items"].updated, synced["items"].deleted) == (0, 0, 1)
    assert synced["item_rooms"].deleted == len(pairs_of_removed)
    assert synced["item_rooms"].version == plain["item_rooms"].version + 1
    ids = {row["id"] for row in _rows(lake, "items", ["id"])}
    assert ids == set(SUBSET_IDS) - {BED_IN_TWO_DIFFERENT}
    assert BED_IN_TWO_DIFFERENT not in {r["item_id"] for r in _rows(lake, "item_rooms")}
    assert commit_counts(lake, NAMES["items"])["deleted"] == "1"

    feed = lake.changes(NAMES["items"], first["items"].version + 1, columns=["id"]).to_pylist()
    kinds = {(row["id"], row["_change_type"]) for row in feed}
    assert (SOFA_KEY, "update_postimage") in kinds and (MIRROR_KEY, "update_preimage") in kinds
    assert (BED_IN_TWO_DIFFERENT, "delete") in kinds
    assert len(feed) == 5  # two updates (pre + post image each) and one delete, nothing else

    again = _ingest(lake, subset, prune=True)
    assert {r: v.version for r, v in again.items()} == {r: v.version for r, v in synced.items()}


def test_the_three_versions_of_one_ingest_are_recorded_together(
    subset: Path, tmp_path: Path
) -> None:
    lake = Lakehouse(tmp_path / "lake")
    first = _ingest(lake, subset)
    assert ingest_versions(lake, NAMES) == {r: v.version for r, v in first.items()}
    _change(subset)
    synced = _ingest(lake, subset, prune=True)
    triple = {r: v.version for r, v in synced.items()}
    assert ingest_versions(lake, NAMES) == triple
    committed = [role for role, result in synced.items() if result.committed]
    assert committed == ["items", "item_rooms"]  # rooms did not change: no commit there
    for role in committed:  # each commit of the ingest carries the whole triple
        entry = lake.table(NAMES[role]).history(1)[0]
        assert entry["version"] == triple[role]
        assert json.loads(entry[VERSIONS]) == triple


def test_a_failure_on_the_third_table_leaves_all_three_as_they_were(
    subset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = Lakehouse(tmp_path / "lake")
    first = _ingest(lake, subset)
    before = _contents(lake)
    _change(subset)
    (subset / "images" / "chair" / "999.999.05.jpg").write_bytes(_valid_jpeg(5))

    real_commit = transaction.commit_changes

    def failing_third(lake_, changes, *args, **kwargs):
        if changes.name == NAMES["item_rooms"]:
            raise OSError("disk full while writing catalog_item_rooms")
        return real_commit(lake_, changes, *args, **kwargs)

    monkeypatch.setattr(transaction, "commit_changes", failing_third)
    with pytest.raises(IngestCommitError, match="catalog_item_rooms.*put back as it was"):
        _ingest(lake, subset, prune=True)
    assert _contents(lake) == before
    assert ingest_versions(lake, NAMES) == {r: v.version for r, v in first.items()}
    # the restore is in the change feed too: a re-index sees the items as they were
    net = lake.changes(NAMES["items"], first["items"].version + 1, columns=["id", "sha256"])
    assert net.num_rows > 0

    monkeypatch.setattr(transaction, "commit_changes", real_commit)
    retried = _ingest(lake, subset, prune=True)
    assert (retried["items"].inserted, retried["items"].deleted) == (1, 1)


def test_a_failed_first_ingest_leaves_no_table(
    subset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_commit = transaction.commit_changes

    def failing_third(lake_, changes, *args, **kwargs):
        if changes.name == NAMES["item_rooms"]:
            raise OSError("no space left")
        return real_commit(lake_, changes, *args, **kwargs)

    monkeypatch.setattr(transaction, "commit_changes", failing_third)
    lake = Lakehouse(tmp_path / "lake")
    with pytest.raises(IngestCommitError):
        _ingest(lake, subset)
    assert not any(lake.exists(name) for name in NAMES.values())


def test_sync_needs_the_whole_source(subset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be combined with max_items"):
        _ingest(Lakehouse(tmp_path / "lake"), subset, prune=True, max_items=3)


def test_cli_sync_prints_the_counts(subset: Path, tmp_path: Path) -> None:
    lake_root = tmp_path / "lake"
    args = ["ingest", "catalog", "--source", str(subset), "--set", f"lake.root={lake_root}"]
    assert CliRunner().invoke(app, args).exit_code == 0
    _change(subset)
    result = CliRunner().invoke(app, [*args, "--prune"])
    assert result.exit_code == 0, result.output
    assert "catalog_items: version 1, 0 inserted, 2 updated, 1 deleted" in result.output


# ---------------------------------------------------------------- concurrent writers

WRITER = """
import sys
from pathlib import Path
from simrec.config import load_settings
from simrec.lake.catalog import ingest_catalog
from simrec.lake.tables import Lakehouse
settings = load_settings(overrides={"lake.root": sys.argv[1]})
ingest_catalog(Lakehouse(sys.argv[1]), settings.catalog, settings.lake, Path(sys.argv[2]),
               prune=True)
"""


def _other_writer(lake_root: Path, source: Path) -> None:
    """A second, real process syncing the catalog into the same tables."""
    subprocess.run([sys.executable, "-c", WRITER, str(lake_root), str(source)], check=True)


def _race_after_planning(monkeypatch, lake_root: Path, source: Path, times: int) -> list[int]:
    """Let another process commit right after this one planned (the first `times` plans)."""
    real_plan, calls = transaction.plan_changes, []

    def plan_then_race(lake_, name, *args, **kwargs):
        planned = real_plan(lake_, name, *args, **kwargs)
        if name == NAMES["items"] and len(calls) < times:
            calls.append(1)  # each time the other process adds one more product
            new_item = source / "images" / "chair" / f"999.999.3{len(calls)}.jpg"
            new_item.write_bytes(_valid_jpeg(30 + len(calls)))
            _other_writer(lake_root, source)
        return planned

    monkeypatch.setattr(transaction, "plan_changes", plan_then_race)
    return calls


def test_a_lost_commit_race_is_planned_again_and_retried(
    subset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake_root = tmp_path / "lake"
    lake = Lakehouse(lake_root)
    _ingest(lake, subset)
    other = _copy_subset(IKEA_DIR, tmp_path / "other")
    (subset / "images" / "couch" / f"{SOFA_KEY}.jpg").write_bytes(_valid_jpeg(9))

    calls = _race_after_planning(monkeypatch, lake_root, other, times=1)
    result = _ingest(lake, subset)  # plain ingest: keeps the other writer's new item
    assert calls == [1]
    items = {row["id"]: row for row in _rows(lake, "items")}
    assert "999.999.31" in items and items[SOFA_KEY]["image"] == _valid_jpeg(9)
    assert result["items"].updated == 1
    assert len(items) == len(SUBSET_IDS) + 1


def test_cli_reports_a_conflict_it_cannot_win_in_one_line(
    subset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake_root = tmp_path / "lake"
    _ingest(Lakehouse(lake_root), subset)
    other = _copy_subset(IKEA_DIR, tmp_path / "other")
    (subset / "images" / "couch" / f"{SOFA_KEY}.jpg").write_bytes(_valid_jpeg(10))
    before = {r: v for r, v in _versions(Lakehouse(lake_root)).items()}
    retries = 1
    # every attempt's plan is overtaken by a real commit of another process
    calls = _race_after_planning(monkeypatch, lake_root, other, times=retries + 1)
    result = CliRunner().invoke(
        app,
        [
            "ingest",
            "catalog",
            "--source",
            str(subset),
            "--set",
            f"lake.root={lake_root}",
            "--set",
            f"lake.commit_retries={retries}",
            "--set",
            "lake.commit_retry_wait_s=0",
        ],
    )
    assert len(calls) == retries + 1
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: table 'catalog_items'")
    assert "another writer" in errors[0] and "run it again" in errors[0]
    assert isinstance(result.exception, SystemExit)
    assert _versions(Lakehouse(lake_root))["items"] >= before["items"]


def test_two_processes_ingesting_at_once_both_finish(subset: Path, tmp_path: Path) -> None:
    """Two real `simrec ingest catalog` processes started together on an empty lake."""
    lake_root = tmp_path / "lake"
    command = [
        sys.executable,
        "-m",
        "simrec.cli",
        "ingest",
        "catalog",
        "--source",
        str(subset),
        "--set",
        f"lake.root={lake_root}",
    ]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert "Traceback" not in err
        assert process.returncode == 0, err
    ids = [row["id"] for row in _rows(Lakehouse(lake_root), "items", ["id"])]
    assert sorted(ids) == sorted(SUBSET_IDS)  # once each: no duplicates from the race
    assert pa.array(ids).unique().to_pylist().__len__() == len(ids)
