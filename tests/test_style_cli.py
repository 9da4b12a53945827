"""`simrec style` says what is missing instead of failing with a traceback."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from simrec.cli import app


def _store_args(settings) -> list[str]:
    return [
        f"--set=lake.root={settings.lake.root}",
        f"--set=mlflow.tracking_uri={settings.mlflow.tracking_uri}",
        f"--set=mlflow.artifact_root={settings.mlflow.artifact_root}",
    ]


def test_style_build_without_the_catalog_points_at_ingest(settings) -> None:
    outcome = CliRunner().invoke(app, ["style", "build", *_store_args(settings)])
    assert outcome.exit_code == 1, outcome.output
    assert "no Delta table 'catalog_items'" in outcome.output and "simrec ingest" in outcome.output


def test_style_commands_without_a_run_point_at_build(settings, tmp_path: Path) -> None:
    image = tmp_path / "query.png"
    image.write_bytes(b"not used")
    for command in (["evaluate"], ["recommend", "--image", str(image)], ["register"]):
        outcome = CliRunner().invoke(app, ["style", *command, *_store_args(settings)])
        assert outcome.exit_code == 1, outcome.output
        assert "no finished style run" in outcome.output and "simrec style build" in outcome.output


def test_style_recommend_rejects_a_bad_n(settings, tmp_path: Path) -> None:
    image = tmp_path / "query.png"
    image.write_bytes(b"not used")
    outcome = CliRunner().invoke(
        app, ["style", "recommend", "--image", str(image), "-n", "0", *_store_args(settings)]
    )
    assert outcome.exit_code == 1 and "-n must be between 1 and 100" in outcome.output
