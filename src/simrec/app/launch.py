"""The `streamlit run` command line behind `simrec app`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import simrec

MAIN = Path(__file__).resolve().with_name("main.py")


def streamlit_command(
    address: str, port: int, config: Path | None, overrides: list[str]
) -> list[str]:
    """`python -m streamlit run main.py` on address:port; settings flags follow `--`."""
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(MAIN),
        "--server.address",
        address,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--",
    ]
    if config is not None:
        command += ["--config", str(config)]
    for override in overrides:
        command += ["--set", override]
    return command


def streamlit_env() -> dict[str, str]:
    """This process's environment, with this simrec's source importable by the app script
    (streamlit puts only the script's own folder on sys.path)."""
    env = dict(os.environ)
    source = str(Path(simrec.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    return env
