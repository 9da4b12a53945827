"""The main job through the real `simrec` console command, on small slices of the real data."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_simrec_pipeline_runs_end_to_end(tmp_path: Path) -> None:
    simrec = shutil.which("simrec", path=str(Path(sys.executable).parent))
    assert simrec, "the simrec console command is not installed in this environment"
    overrides = [
        f"--set=lake.root={tmp_path / 'lakehouse'}",
        f"--set=mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"--set=mlflow.artifact_root={tmp_path / 'mlruns'}",
        f"--set=catalog.source_dir={REPO.parent / 'shared' / 'data' / 'ikea'}",  # no download
    ]
    small = f"{REPO / 'conf' / 'simrec.yaml'}:{REPO / 'conf' / 'small.yaml'}"
    done = subprocess.run(
        [simrec, "pipeline", "--config", small, *overrides],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done." in done.stdout and "Recall@1" in done.stdout
    assert (tmp_path / "lakehouse" / "fashion_mnist" / "_delta_log").is_dir()
    assert (tmp_path / "lakehouse" / "catalog_items" / "_delta_log").is_dir()
    assert "models:/simrec-fashion@champion" in done.stdout
    assert "models:/simrec-style@champion" in done.stdout
    # the furniture half ran beside training (pipeline.style_beside_training), in a child
    beside = "catalog ingest + style build + registration: running in the background"
    assert beside in done.stderr
    assert "ingesting the IKEA catalog" in done.stderr  # the child logs at the parent's levels
