"""MLproject entry points render to the same commands the CLI accepts (no stray empty flags)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from mlflow.projects._project_spec import load_project

REPO = Path(__file__).resolve().parents[1]
PROJECT = load_project(str(REPO))
OPTIONS_WITH_VALUES = {
    "--run-id", "--table-version", "--params", "--token-file", "--max-rows", "--set", "--source",
    "--num-proc", "--max-evals", "--parallelism", "--trials", "--output", "-k", "--pairs",
    "--register", "--alias", "--model", "--model-uri", "--host", "--port", "--table",
    "--output-table", "--items-version",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PROJECT._entry_points))
def test_optional_parameters_left_empty_add_no_flags(name: str) -> None:
    """MLflow passes an empty optional value as '' (two quotes): a quoted `[ -n "{x}" ]`
    is then always true and the command gets a flag without its value."""
    entry_point = PROJECT.get_entry_point(name)
    required = {
        key: str(REPO / "README.md") if param.type == "path" else "1"
        for key, param in entry_point.parameters.items()
        if param.default is None
    }
    command = entry_point.compute_command(required, storage_dir=str(REPO))
    assert command.startswith(("simrec ", "mlflow ")), command
    # What bash runs, with the program name swapped for echo: every $(...) expanded.
    words = shlex.split(
        subprocess.run(
            ["bash", "-c", "echo " + command.split(" ", 1)[1]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    flags_without_value = [
        word
        for word, following in zip(words, [*words[1:], ""], strict=True)
        if word in OPTIONS_WITH_VALUES and (following in {"", "''"} or following.startswith("--"))
    ]
    assert not flags_without_value, command


def test_no_entry_point_repeats_a_config_default() -> None:
    """Every knob an entry point passes on is optional (empty): its default lives in the
    config alone, so a tuned `--params` file is never overridden by a value nobody chose."""
    for name in PROJECT._entry_points:
        for key, param in PROJECT.get_entry_point(name).parameters.items():
            if key == "config" or param.default is None:
                continue
            assert param.default in ("", "false", "true"), (name, key, param.default)
