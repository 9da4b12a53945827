"""`mlflow run . -e train` on a tiny config: a tuned `params` file is what trains, unless a
knob is given explicitly with -P (which then wins over the file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _mlflow_run(settings, config: Path, *params: str) -> dict[str, str]:
    mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    assert mlflow_cli, "the mlflow console command is not installed in this environment"
    tracking_uri = settings.mlflow.tracking_uri
    # In the full suite an earlier test leaves MLFLOW_EXPERIMENT_ID set in this process, and
    # `mlflow run` refuses it beside --experiment-name: the run gets only what it is given.
    inherited = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")
    }
    env = {
        **inherited,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": tracking_uri,
    }
    arguments = [
        mlflow_cli, "run", str(REPO), "-e", "train", "--env-manager", "local",
        "--experiment-name", settings.mlflow.experiment, "-P", f"config={config}",
        *[part for param in params for part in ("-P", param)],
    ]  # fmt: skip
    done = subprocess.run(
        arguments, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=[settings.mlflow.experiment],
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].data.params


def test_tuned_params_file_wins_unless_a_value_is_given(fashion_lake, tmp_path, make_settings):
    _, lake, _ = fashion_lake
    settings = make_settings(tmp_path, **{"lake.root": str(lake.root)})
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "lake": {"root": str(lake.root)},
                "mlflow": {
                    "tracking_uri": settings.mlflow.tracking_uri,
                    "artifact_root": str(settings.mlflow.artifact_root),
                },
                "model": {"conv_filters": [8], "embedding_dim": 16, "augment": False},
                "train": {"epochs": 1, "steps_per_epoch": 2, "validation_queries": 50},
            }
        )
    )
    config = Path(f"{REPO / 'conf' / 'simrec.yaml'}:{overlay}")
    best = tmp_path / "best.yaml"
    best.write_text(
        yaml.safe_dump(
            {"train.epochs": 2, "train.learning_rate": 0.0005, "model.embedding_dim": 24}
        )
    )
    tuned = _mlflow_run(settings, config, f"params={best}")
    assert tuned["train.epochs"] == "2"
    assert float(tuned["train.learning_rate"]) == 0.0005
    assert tuned["model.embedding_dim"] == "24"

    explicit = _mlflow_run(settings, config, f"params={best}", "epochs=1")
    assert explicit["train.epochs"] == "1"  # given explicitly: wins over the file
    assert explicit["model.embedding_dim"] == "24"  # not given: the file's value
