"""The main job through the real `simrec` console command, on small slices of the real data."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _pipeline(tmp_path: Path, catalog: Path) -> subprocess.CompletedProcess:
    simrec = shutil.which("simrec", path=str(Path(sys.executable).parent))
    assert simrec, "the simrec console command is not installed in this environment"
    overrides = [
        f"--set=lake.root={tmp_path / 'lakehouse'}",
        f"--set=mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"--set=mlflow.artifact_root={tmp_path / 'mlruns'}",
        f"--set=catalog.source_dir={catalog}",
    ]
    small = f"{REPO / 'conf' / 'simrec.yaml'}:{REPO / 'conf' / 'small.yaml'}"
    return subprocess.run(
        [simrec, "pipeline", "--config", small, *overrides],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_simrec_pipeline_runs_end_to_end(tmp_path: Path) -> None:
    done = _pipeline(tmp_path, REPO.parent / "shared" / "data" / "ikea")  # no download
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done." in done.stdout and "Recall@1" in done.stdout
    assert (tmp_path / "lakehouse" / "fashion_mnist" / "_delta_log").is_dir()
    assert (tmp_path / "lakehouse" / "catalog_items" / "_delta_log").is_dir()
    assert "models:/simrec-fashion@champion" in done.stdout
    assert "models:/simrec-style@champion" in done.stdout
    # the furniture half ran beside the ingest and training (pipeline.style_beside_training),
    # in a child started first, so the single-threaded Fashion-MNIST ingest leaves it a core
    beside = "catalog ingest + style build + registration: running in the background"
    assert beside in done.stderr
    ingest = next(line for line in done.stderr.splitlines() if "[1/4] ingesting" in line)
    assert "the furniture half, runs beside it" in ingest
    assert "ingesting the IKEA catalog" in done.stderr  # the child logs at the parent's levels


def test_a_wrong_catalog_folder_fails_before_training_with_a_plain_error(tmp_path: Path) -> None:
    # The catalog is ingested beside training, in a child: its source must still be checked
    # first, or a typo costs the whole training time and ends in a child's traceback.
    missing = tmp_path / "no-such-ikea"
    done = _pipeline(tmp_path, missing)
    assert done.returncode == 1
    assert f"error: IKEA catalog folder {missing} does not exist" in done.stderr
    assert "Traceback" not in done.stderr and "training on" not in done.stderr
    assert not (tmp_path / "lakehouse" / "catalog_items").exists()
