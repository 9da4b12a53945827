"""The main job through the real `simrec` console command, on small slices of the real data."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_simrec_pipeline_runs_end_to_end(tmp_path: Path, small_model_args: list[str]) -> None:
    simrec = shutil.which("simrec", path=str(Path(sys.executable).parent))
    assert simrec, "the simrec console command is not installed in this environment"
    overrides = [
        f"--set=lake.root={tmp_path / 'lakehouse'}",
        f"--set=mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"--set=mlflow.artifact_root={tmp_path / 'mlruns'}",
        "--set=train.max_rows=2000",
        "--set=evaluation.max_queries=500",
        *small_model_args,
    ]
    done = subprocess.run(
        [simrec, "pipeline", *overrides], capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done." in done.stdout and "Recall@1" in done.stdout
    assert (tmp_path / "lakehouse" / "fashion_mnist" / "_delta_log").is_dir()
    assert (tmp_path / "lakehouse" / "catalog_items" / "_delta_log").is_dir()
    assert "models:/simrec-fashion@champion" in done.stdout
