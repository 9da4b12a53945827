"""bench/results.json: one section per benchmark, each with the machine it ran on, and the
README's results table generated from it."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from simrec.config import Settings, load_settings

RESULTS_FILE = Path(__file__).resolve().parent / "results.json"
# The IKEA checkout beside the repository (../shared), where there is one.
LOCAL_IKEA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ikea"
README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


# The vector instructions that decide CPU training and inference speed: one "AMD EPYC" has
# AVX-512 with bf16 (`train.precision: auto` trains in bf16 there, ~1.65× float32), another
# only AVX2 and is much slower at the same work. Figures are comparable only between
# machines with the same set.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def _cpuinfo() -> dict[str, str]:
    """The first value of each /proc/cpuinfo field (the first CPU's), {} where there is none."""
    fields: dict[str, str] = {}
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return fields
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def machine() -> dict[str, object]:
    cpuinfo = _cpuinfo()
    cpu = cpuinfo.get("model name") or platform.processor() or ""
    flags = set(cpuinfo.get("flags", "").split())
    memory_gib = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "cpu": cpu,
        "cpu_flags": [flag for flag in SPEED_FLAGS if flag in flags],
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "gpu": _gpus(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _gpus() -> str | None:
    """NVIDIA GPUs by name (`nvidia-smi`), or None on a machine without them."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return None
    names = [name.strip() for name in listed if name.strip()]
    return ", ".join(names) or None


def load(results_file: Path = RESULTS_FILE) -> dict[str, dict]:
    return json.loads(results_file.read_text()) if results_file.exists() else {}


def record(
    name: str,
    result: dict[str, object],
    results_file: Path = RESULTS_FILE,
    readme: Path = README,
) -> None:
    """Store `result` as section `name`, stamped with the time and the machine, and regenerate
    the README table. A section's `summary` (a flat dict) is what the table shows."""
    results = load(results_file)
    results[name] = {
        **result,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    # Sections by name, so the file's diff stays small; inside each, the benchmark's own order
    # (a summary's total first, then its steps), which the README table shows as written.
    results = dict(sorted(results.items()))
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    render_readme(readme, results)


def describe_machine(machine_info: object) -> str:
    if not isinstance(machine_info, dict) or not machine_info:
        return "machine not recorded"
    details = [
        f"{machine_info['cores']} cores" if machine_info.get("cores") else None,
        f"{machine_info['memory_gib']} GiB RAM" if machine_info.get("memory_gib") else None,
        str(machine_info["gpu"]) if machine_info.get("gpu") else None,
    ]
    shown = [d for d in details if d]
    text = str(machine_info.get("cpu") or "unknown CPU")
    if "cpu_flags" in machine_info:  # sections recorded before it was, say nothing of it
        text += f" [{' '.join(machine_info['cpu_flags']) or 'no AVX2'}]"
    if shown:
        text += f" ({', '.join(shown)})"
    if machine_info.get("python"):
        text += f", Python {machine_info['python']}"
    return _cell(text)


def _cell(value: object) -> str:
    """A value as one Markdown table cell."""
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    elif value is None:
        text = "–"
    elif isinstance(value, dict | list):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    return " ".join(text.split()).replace("|", "\\|")


def _section(name: str, section: dict[str, object]) -> list[str]:
    summary = section.get("summary")
    when = str(section.get("measured_at") or "time not recorded")
    lines = [f"**{_cell(name)}** — {describe_machine(section.get('machine'))}; {_cell(when)}", ""]
    if not isinstance(summary, dict) or not summary:
        return [*lines, "_no summary recorded_", ""]
    rows = [f"| {_cell(metric)} | {_cell(value)} |" for metric, value in summary.items()]
    return [*lines, "| metric | value |", "|---|---|", *rows, ""]


def render_results(results: dict[str, dict]) -> str:
    """The README block: one table per benchmark, each with the machine it ran on."""
    lines = [BEGIN, "Generated from `bench/results.json`; regenerate with `make bench`.", ""]
    if not results:
        lines += ["_No results yet: run `make bench`._", ""]
    for name, section in sorted(results.items()):
        lines += _section(name, section if isinstance(section, dict) else {})
    return "\n".join([*lines, END])


def render_readme(readme: Path = README, results: dict[str, dict] | None = None) -> bool:
    """Rewrite the README's results block (between the markers) from results.json; text
    outside the markers is left as it is. Returns False where the README has no markers."""
    if not readme.exists():
        return False
    text = readme.read_text()
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 or end < begin:
        return False
    block = render_results(load() if results is None else results)
    updated = text[:begin] + block + text[end + len(END) :]
    if updated != text:
        readme.write_text(updated)
    return True


def local_catalog() -> dict[str, object]:
    """`catalog.source_dir` of the local checkout when there is one, as `make demo` sets it;
    nothing otherwise (the configured, verified download)."""
    return {"catalog.source_dir": str(LOCAL_IKEA)} if (LOCAL_IKEA / "images").is_dir() else {}


def fresh_workspace(
    workspace: Path, overrides: list[str], defaults: dict[str, object] | None = None
) -> Settings:
    """Settings whose lake and MLflow store live in `workspace`, emptied first, so a
    benchmark never touches the user's own; `defaults` apply before the caller's `overrides`."""
    shutil.rmtree(workspace, ignore_errors=True)
    return load_settings(
        overrides={
            "lake.root": str(workspace / "lakehouse"),
            "mlflow.tracking_uri": f"sqlite:///{workspace / 'mlflow.db'}",
            "mlflow.artifact_root": str(workspace / "mlruns"),
            **(defaults or {}),
        }
    ).with_overrides(overrides)
