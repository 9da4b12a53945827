"""bench/results.json: one section per benchmark, each with the machine it ran on, and the
README's results table generated from it."""

from __future__ import annotations

import json
import os
import platform
import re
from datetime import UTC, datetime
from pathlib import Path

RESULTS_FILE = Path(__file__).resolve().parent / "results.json"
README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def machine() -> dict[str, object]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load() -> dict[str, dict]:
    return json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.exists() else {}


def record(name: str, result: dict[str, object]) -> None:
    """Store `result` as section `name`, stamped with the time and the machine."""
    results = load()
    results[name] = {
        **result,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    RESULTS_FILE.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    render_readme()


def _rows(results: dict[str, dict]) -> list[str]:
    rows = []
    for name, section in sorted(results.items()):
        for metric, value in section.get("summary", {}).items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            rows.append(f"| {name} | {metric} | {shown} |")
    return rows


def render_readme() -> None:
    """Rewrite the README's results table (between the markers) from results.json."""
    if not README.exists():
        return
    results = load()
    machines = sorted(
        {f"{s['machine']['cpu']} ({s['machine']['cores']} cores)" for s in results.values()}
    )
    table = "\n".join(
        [
            BEGIN,
            f"Measured on: {'; '.join(machines) or 'n/a'} — regenerate with `make bench`.",
            "",
            "| benchmark | metric | value |",
            "|---|---|---|",
            *_rows(results),
            END,
        ]
    )
    text = README.read_text()
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: table, text, flags=re.S)
        README.write_text(text)
