"""Hyperparameter search wall time: the same 8-trial search with sequential `Trials` and with
`SparkTrials(parallelism=2)` on local Spark, side by side on this machine.

Both searches use the same seed, so (within hyperopt's random start-up phase, 20 trials for TPE)
they evaluate the same 8 configurations; the benchmark checks that. A third run caps TensorFlow
at one thread per trial, to show how much of the outcome is two trials fighting over two
cores; and a fresh Python process importing what a Spark trial needs is timed, because
SparkTrials starts a new Python worker for every trial.

    python -m bench.tuning [--set tuning.max_evals=8 ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.results import record
from simrec.config import Settings, load_settings
from simrec.lake.fashion_mnist import ingest_fashion_mnist
from simrec.lake.tables import Lakehouse, TableVersion
from simrec.tuning.search import TuneResult, tune

WORKSPACE = Path(__file__).resolve().parent / ".work" / "tuning"
ROWS_PER_SPLIT = 10_000

# The configured space with a per-trial budget this machine can afford 3 × 8 times.
SEARCH = {
    "tuning.max_evals": 8,
    "tuning.parallelism": 2,
    "tuning.seed": 7,
    "train.max_rows": ROWS_PER_SPLIT,
    "train.epochs": 1,
    "train.steps_per_epoch": 100,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "trials": {"tuning.trials": "local"},
    "spark_trials_p2": {"tuning.trials": "spark"},
    "spark_trials_p2_1_thread": {"tuning.trials": "spark", "tuning.threads_per_trial": 1},
}
TRIAL_IMPORTS = "import tensorflow, tensorflow_similarity, mlflow, hyperopt, simrec.model.train"


def _fresh_import_seconds() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", TRIAL_IMPORTS], check=True, capture_output=True)
    return time.perf_counter() - started


def _run(settings: Settings, lake: Lakehouse, table: TableVersion, name: str) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    result: TuneResult = tune(
        settings, lake, table, best_params_path=WORKSPACE / f"best-{name}.yaml", run_name=name
    )
    wall = time.perf_counter() - started
    trial_seconds = _trial_seconds(result)
    return {
        "wall_seconds": round(wall, 1),
        "search_seconds": round(result.search_seconds, 1),
        "trials": len(result.trials),
        "failed": len(result.failed),
        "sum_trial_seconds": round(sum(trial_seconds), 1),
        "mean_trial_seconds": round(sum(trial_seconds) / max(1, len(trial_seconds)), 1),
        "best_val_recall_at_1": round(result.best_val_recall_at_1, 4),
        "loadavg_1min_before": round(load_before, 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
        "configurations": [trial.params for trial in result.trials],
        "run_id": result.run_id,
    }


def _trial_seconds(result: TuneResult) -> list[float]:
    import mlflow

    return [
        mlflow.get_run(trial.run_id).data.metrics.get("trial_seconds", 0.0)
        for trial in result.trials
        if trial.run_id
    ]


def main(overrides: list[str]) -> dict[str, object]:
    shutil.rmtree(WORKSPACE, ignore_errors=True)
    base = load_settings(
        overrides={
            "lake.root": str(WORKSPACE / "lakehouse"),
            "mlflow.tracking_uri": f"sqlite:///{WORKSPACE / 'mlflow.db'}",
            "mlflow.artifact_root": str(WORKSPACE / "mlruns"),
            **SEARCH,
        }
    ).with_overrides(overrides)
    lake = Lakehouse(base.lake.root)
    ingested = ingest_fashion_mnist(
        lake, base.fashion_mnist, base.lake.fashion_table, max_rows_per_split=ROWS_PER_SPLIT
    )
    table = lake.pin(ingested.name, ingested.version)

    import_seconds = _fresh_import_seconds()
    runs = {}
    for name, variant in VARIANTS.items():
        print(f"== {name}")
        runs[name] = _run(base.with_overrides(variant), lake, table, name)
        print({key: value for key, value in runs[name].items() if key != "configurations"})

    sequential = runs["trials"]["search_seconds"]
    same_configurations = all(
        run["configurations"] == runs["trials"]["configurations"] for run in runs.values()
    )
    result = {
        "summary": {
            "trials_wall_s": sequential,
            "spark_trials_p2_wall_s": runs["spark_trials_p2"]["search_seconds"],
            "spark_trials_p2_1_thread_wall_s": runs["spark_trials_p2_1_thread"]["search_seconds"],
            "speedup_spark_p2": round(sequential / runs["spark_trials_p2"]["search_seconds"], 2),
            "speedup_spark_p2_1_thread": round(
                sequential / runs["spark_trials_p2_1_thread"]["search_seconds"], 2
            ),
            "fresh_trial_process_import_s": round(import_seconds, 1),
            "same_8_configurations": same_configurations,
        },
        "runs": runs,
        "search": {key: str(value) for key, value in SEARCH.items()},
        "overrides": overrides,
        "rows_per_split": ROWS_PER_SPLIT,
        "spark_master": base.spark.master,
    }
    record("tuning", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    print(main(parser.parse_args().overrides)["summary"])
