"""The command line says what is missing instead of failing with a traceback."""

from __future__ import annotations

from typer.testing import CliRunner

from simrec.cli import app


def _store_args(settings) -> list[str]:
    return [
        f"--set=lake.root={settings.lake.root}",
        f"--set=mlflow.tracking_uri={settings.mlflow.tracking_uri}",
        f"--set=mlflow.artifact_root={settings.mlflow.artifact_root}",
    ]


def test_train_without_a_table_points_at_ingest(settings) -> None:
    outcome = CliRunner().invoke(app, ["train", *_store_args(settings)])
    assert outcome.exit_code == 1
    assert "no Delta table 'fashion_mnist'" in outcome.output and "simrec ingest" in outcome.output


def test_index_and_evaluate_without_a_run_point_at_train(settings) -> None:
    for command in ("index", "evaluate"):
        outcome = CliRunner().invoke(app, [command, *_store_args(settings)])
        assert outcome.exit_code == 1, outcome.output
        assert "no finished training run" in outcome.output


def test_bad_override_is_reported(settings) -> None:
    outcome = CliRunner().invoke(app, ["train", "--set", "train.epoch=3"])
    assert outcome.exit_code == 1
    assert "unknown config key 'train.epoch'" in outcome.output
