"""Fashion-MNIST quality target: the default configuration, trained from scratch on this
machine, timed; Recall@1/5 and MAP@R on the full test split beside the raw-pixel kNN baseline.

    python -m bench.quality [--set train.epochs=10 ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.results import fresh_workspace, record
from simrec.evaluation.evaluate import evaluate
from simrec.index.build import build_catalog_index
from simrec.lake.fashion_mnist import ingest_fashion_mnist
from simrec.lake.tables import Lakehouse
from simrec.model.train import train

WORKSPACE = Path(__file__).resolve().parent / ".work" / "quality"
TARGET_RECALL_AT_1 = 0.93
TIME_BUDGET_S = 15 * 60


def main(overrides: list[str]) -> dict[str, object]:
    settings = fresh_workspace(WORKSPACE, overrides)
    lake = Lakehouse(settings.lake.root)
    table = ingest_fashion_mnist(lake, settings.fashion_mnist, settings.lake.fashion_table)
    table = lake.pin(table.name, table.version)
    started = time.perf_counter()
    trained = train(settings, lake, table, run_name="bench-quality")
    train_seconds = time.perf_counter() - started
    build_catalog_index(settings, lake, trained.run_id)
    report = evaluate(settings, lake, trained.run_id)
    result = {
        "summary": {
            "recall_at_1": report.model["recall_at_1"],
            "recall_at_5": report.model["recall_at_5"],
            "map_at_r": report.model["map_at_r"],
            "raw_pixel_recall_at_1": report.baseline["recall_at_1"],
            "raw_pixel_map_at_r": report.baseline["map_at_r"],
            "train_minutes": round(train_seconds / 60, 1),
            "target_recall_at_1_met": report.model["recall_at_1"] >= TARGET_RECALL_AT_1
            and train_seconds <= TIME_BUDGET_S,
        },
        "queries": report.queries,
        "best_epoch": trained.best_epoch,
        "best_val_recall_at_1": trained.val_recall_at_1,
        "overrides": overrides,
        "model": settings.model.model_dump(),
        "train": settings.train.model_dump(),
    }
    record("fashion_quality", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    print(main(parser.parse_args().overrides))
