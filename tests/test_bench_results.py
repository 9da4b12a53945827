"""The README's results table is regenerated from bench/results.json, one machine per section,
on a copy of the README (the real one is never written here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench.results import BEGIN, END, README, SPEED_FLAGS, load, record, render_readme

RESULTS = {
    "fashion_quality": {
        "summary": {"recall_at_1": 0.91234, "train_minutes": 11.0, "target_met": False},
        "measured_at": "2026-11-21T10:00:00+00:00",
        "machine": {"cpu": "Xeon A", "cores": 2, "memory_gib": 23.4, "python": "3.11.7"},
    },
    "serving_latency": {
        "summary": {"p50_ms": 2.8, "throughput_rps": 1234.56, "note": "a|b\nc", "errors": 0},
        "measured_at": "2026-11-21T11:00:00+00:00",
        "machine": {"cpu": "EPYC B", "cores": 16, "gpu": "NVIDIA H100", "python": "3.11.7"},
    },
    "same_name_other_speed": {
        "summary": {"train_s": 1300.0},
        "machine": {"cpu": "EPYC B", "cpu_flags": ["avx2"], "cores": 2, "python": "3.11.7"},
    },
    "half_written": {"machine": {}},
}


def _readme_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "README.md"
    shutil.copy(README, copy)
    return copy


def _block(text: str) -> str:
    return text[text.index(BEGIN) : text.index(END) + len(END)]


def test_each_section_names_its_machine_and_the_rest_of_the_readme_stays(tmp_path: Path) -> None:
    real_readme = README.read_bytes()
    readme = _readme_copy(tmp_path)
    original = readme.read_text()
    assert render_readme(readme, RESULTS)
    text = readme.read_text()
    block = _block(text)
    assert text.replace(block, "") == original.replace(_block(original), "")
    fashion, serving = block.index("**fashion_quality**"), block.index("**serving_latency**")
    assert fashion < serving
    assert "Xeon A (2 cores, 23.4 GiB RAM), Python 3.11.7" in block[fashion:serving]
    assert "EPYC B (16 cores, NVIDIA H100)" in block[serving:]
    # one CPU name covers machines of very different speed: the vector ISA tells them apart
    assert "EPYC B [avx2] (2 cores)" in block
    assert "| recall_at_1 | 0.9123 |" in block and "| target_met | no |" in block
    assert "| throughput_rps | 1234.6 |" in block and "| errors | 0 |" in block
    assert "| note | a\\|b c |" in block  # a cell never breaks the table
    assert "**half_written** — machine not recorded" in block and "_no summary recorded_" in block
    assert README.read_bytes() == real_readme


def test_regenerating_is_idempotent_and_replaces_the_old_block(tmp_path: Path) -> None:
    readme = _readme_copy(tmp_path)
    render_readme(readme, RESULTS)
    once = readme.read_text()
    render_readme(readme, RESULTS)
    assert readme.read_text() == once
    render_readme(readme, {})
    emptied = readme.read_text()
    assert "fashion_quality" not in _block(emptied) and "No results yet" in emptied
    assert emptied.count(BEGIN) == emptied.count(END) == 1


def test_a_readme_without_markers_is_left_alone(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# no results block\n")
    assert not render_readme(readme, RESULTS)
    assert readme.read_text() == "# no results block\n"
    assert not render_readme(tmp_path / "missing.md", RESULTS)


def test_record_stamps_the_machine_and_updates_file_and_table(tmp_path: Path) -> None:
    readme, results_file = _readme_copy(tmp_path), tmp_path / "results.json"
    results_file.write_text(json.dumps({"older": RESULTS["fashion_quality"]}))
    record("tiny", {"summary": {"value": 0.5}}, results_file=results_file, readme=readme)
    stored = load(results_file)
    assert set(stored) == {"older", "tiny"}
    assert stored["tiny"]["machine"]["cores"] and stored["tiny"]["measured_at"]
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    assert stored["tiny"]["machine"]["cpu_flags"] == [f for f in SPEED_FLAGS if f in flags]
    block = _block(readme.read_text())
    assert "**older**" in block and "**tiny**" in block and "| value | 0.5000 |" in block


def test_record_keeps_the_benchmarks_order_of_figures(tmp_path: Path) -> None:
    readme, results_file = _readme_copy(tmp_path), tmp_path / "results.json"
    summary = {"total_minutes": 10.0, "ingest_s": 7.0, "train_s": 500.0, "evaluate_s": 40.0}
    record("steps", {"summary": summary}, results_file=results_file, readme=readme)
    record("another", {"summary": {"value": 1.0}}, results_file=results_file, readme=readme)
    stored = load(results_file)
    assert list(stored) == ["another", "steps"]  # sections by name
    assert list(stored["steps"]["summary"]) == list(summary)  # figures as the bench wrote them
    block = _block(readme.read_text())
    rows = [block.index(f"| {name} |") for name in summary]
    assert rows == sorted(rows)
