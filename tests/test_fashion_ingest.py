"""Fashion-MNIST ingest from the real IDX files into a real Delta table."""

from __future__ import annotations

import gzip
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from deltalake import DeltaTable
from PIL import Image

from simrec.lake.fashion_mnist import (
    DatasetFileError,
    ingest_fashion_mnist,
    load_split,
    locate_files,
)
from simrec.lake.tables import Lakehouse
from simrec.spark import read_table


def test_rows_match_the_idx_files(fashion_lake) -> None:
    settings, lake, table = fashion_lake
    rows = lake.read(table.name, table.version).to_pydict()
    assert len(rows["id"]) == 6000 and len(set(rows["id"])) == 6000
    folder, _ = locate_files(settings.fashion_mnist)
    images, labels = load_split(folder, "test", settings.fashion_mnist.files)
    position = rows["id"].index("fmnist-test-00042")
    decoded = np.asarray(Image.open(io.BytesIO(rows["image"][position])))
    assert np.array_equal(decoded, images[42])
    assert rows["label"][position] == labels[42]
    assert rows["label_name"][position] == settings.fashion_mnist.label_names[labels[42]]
    assert rows["split"][position] == "test"
    assert {rows["split"].count("train"), rows["split"].count("test")} == {3000}


def test_reingest_adds_nothing_and_appending_adds_a_version(tmp_path: Path, settings) -> None:
    lake = Lakehouse(settings.lake.root)
    first = ingest_fashion_mnist(lake, settings.fashion_mnist, "fm", max_rows_per_split=50)
    again = ingest_fashion_mnist(lake, settings.fashion_mnist, "fm", max_rows_per_split=50)
    more = ingest_fashion_mnist(lake, settings.fashion_mnist, "fm", max_rows_per_split=60)
    assert (first.rows_added, again.rows_added, more.rows_added) == (100, 0, 20)
    assert again.version == first.version and more.version == first.version + 1
    assert lake.read("fm", version=first.version).num_rows == 100
    assert lake.read("fm").num_rows == 120


def _copy_files(settings, target: Path) -> Path:
    folder, _ = locate_files(settings.fashion_mnist)
    target.mkdir()
    for name in settings.fashion_mnist.files:
        shutil.copy(folder / name, target / name)
    return target


def test_corrupt_file_fails_clearly_and_leaves_the_table(tmp_path: Path, settings) -> None:
    lake = Lakehouse(settings.lake.root)
    ingest_fashion_mnist(lake, settings.fashion_mnist, "fm", max_rows_per_split=20)
    source = _copy_files(settings, tmp_path / "idx")
    bad = source / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated gzip
    corrupt = settings.with_overrides({"fashion_mnist.source_dir": str(source)})
    with pytest.raises(DatasetFileError, match="t10k-labels-idx1-ubyte.gz"):
        ingest_fashion_mnist(lake, corrupt.fashion_mnist, "fm", max_rows_per_split=30)
    assert lake.version("fm") == 0 and lake.read("fm").num_rows == 40


def test_checksum_mismatch_is_refused(tmp_path: Path, settings) -> None:
    source = _copy_files(settings, tmp_path / "idx")
    name = "train-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress((source / name).read_bytes()))
    content[-1] = (content[-1] + 1) % 10  # one flipped label, still a valid IDX file
    (source / name).write_bytes(gzip.compress(bytes(content)))
    tampered = settings.with_overrides({"fashion_mnist.source_dir": str(source)})
    with pytest.raises(DatasetFileError, match="sha256"):
        ingest_fashion_mnist(Lakehouse(settings.lake.root), tampered.fashion_mnist, "fm", 10)
    assert not Lakehouse(settings.lake.root).exists("fm")


def test_spark_reads_the_pinned_snapshot(spark, tmp_path: Path, settings) -> None:
    lake = Lakehouse(settings.lake.root)
    v0 = ingest_fashion_mnist(lake, settings.fashion_mnist, "fm", max_rows_per_split=30)
    ingest_fashion_mnist(lake, settings.fashion_mnist, "fm", max_rows_per_split=40)
    frame = read_table(spark, lake, lake.pin("fm", v0.version))
    assert frame.count() == 60
    assert frame.groupBy("split").count().collect() and set(
        row["split"] for row in frame.select("split").distinct().collect()
    ) == {"train", "test"}
    assert read_table(spark, lake, lake.pin("fm")).count() == 80


def test_the_configured_slice_is_the_default(tmp_path: Path, settings) -> None:
    lake = Lakehouse(settings.lake.root)
    sliced = settings.with_overrides({"fashion_mnist.max_rows_per_split": 25})
    assert ingest_fashion_mnist(lake, sliced.fashion_mnist, "fm").rows_added == 50
    assert ingest_fashion_mnist(lake, sliced.fashion_mnist, "fm", 30).rows_added == 10


def test_delta_format_reads_through_the_spark_delta_source(spark, settings) -> None:
    """Where the cluster has the delta-spark jars; here Spark has no such source."""
    lake = Lakehouse(settings.lake.root)
    table = ingest_fashion_mnist(lake, settings.fashion_mnist, "fm", max_rows_per_split=5)
    with pytest.raises(Exception, match="(?i)delta"):
        read_table(spark, lake, lake.pin("fm", table.version), delta_format=True).count()


def test_an_explicit_source_without_the_files_is_an_error(tmp_path: Path, settings) -> None:
    typo = settings.with_overrides({"fashion_mnist.source_dir": str(tmp_path / "no-such-dir")})
    with pytest.raises(DatasetFileError, match="no-such-dir.*lacks"):
        locate_files(typo.fashion_mnist)
    assert not (tmp_path / "downloads").exists()  # and nothing was downloaded instead


def test_cli_source_typo_is_a_one_line_error(tmp_path: Path, settings) -> None:
    from typer.testing import CliRunner

    from simrec.cli import app

    result = CliRunner().invoke(
        app,
        [
            "ingest",
            "fashion-mnist",
            "--source",
            str(tmp_path / "typo"),
            "--set",
            f"lake.root={settings.lake.root}",
        ],
    )
    assert result.exit_code == 1
    assert "typo" in result.output and "lacks" in result.output
    assert not Lakehouse(settings.lake.root).exists("fashion_mnist")


def _other_process_ingests(settings, max_rows: int) -> None:
    """A second, real `simrec ingest fashion-mnist` process writing to the same lake."""
    import subprocess
    import sys

    subprocess.run(
        [
            sys.executable,
            "-m",
            "simrec.cli",
            "ingest",
            "fashion-mnist",
            "--max-rows",
            str(max_rows),
            "--set",
            f"lake.root={settings.lake.root}",
        ],
        check=True,
        capture_output=True,
    )


def test_a_table_created_meanwhile_by_another_process_is_merged_into(
    settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = Lakehouse(settings.lake.root)
    real_exists = Lakehouse.exists

    def checked_then_overtaken(self, name):  # the other process creates it right after
        seen = real_exists(self, name)
        if not seen:
            monkeypatch.setattr(Lakehouse, "exists", real_exists)
            _other_process_ingests(settings, 20)
        return seen

    monkeypatch.setattr(Lakehouse, "exists", checked_then_overtaken)
    result = ingest_fashion_mnist(lake, settings.fashion_mnist, max_rows_per_split=30)
    assert result.rows_added == 20  # the other process's 40 rows are kept, not duplicated
    ids = lake.read("fashion_mnist", columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 60


def test_a_lost_merge_race_is_one_line_naming_the_table(
    tmp_path: Path, settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from simrec.cli import app

    lake = Lakehouse(settings.lake.root)
    ingest_fashion_mnist(lake, settings.fashion_mnist, max_rows_per_split=10)
    real_merge = DeltaTable.merge

    def overtaken_merge(self, *args, **kwargs):  # another process commits just before
        monkeypatch.setattr(DeltaTable, "merge", real_merge)
        _other_process_ingests(settings, 20)
        return real_merge(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "merge", overtaken_merge)
    result = CliRunner().invoke(
        app,
        ["ingest", "fashion-mnist", "--max-rows", "30", "--set", f"lake.root={settings.lake.root}"],
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("error: table 'fashion_mnist'") and "run it again" in error
    assert lake.read("fashion_mnist", columns=["id"]).num_rows == 40  # only the other's commit
