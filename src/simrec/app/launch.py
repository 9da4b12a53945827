"""The `streamlit run` command line behind `simrec app`."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import simrec
from simrec.config import AppSettings

MAIN = Path(__file__).resolve().with_name("main.py")


def upload_limit_mb(max_upload_bytes: int) -> int:
    """Streamlit's `server.maxUploadSize` (whole MiB) for simrec's byte limit: rounded up, so
    Streamlit never refuses what simrec accepts and simrec's own check gives the exact message."""
    return max(1, math.ceil(max_upload_bytes / 2**20))


def streamlit_command(
    address: str, port: int, config: Path | None, overrides: list[str], app: AppSettings
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
        "--server.maxUploadSize",
        str(upload_limit_mb(app.max_upload_bytes)),
        "--client.showErrorDetails",
        app.show_error_details,
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
