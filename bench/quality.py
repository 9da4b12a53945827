"""Fashion-MNIST quality target: the default configuration, trained from scratch on this
machine, timed; Recall@1/5 and MAP@R on the full test split beside the raw-pixel kNN baseline;
training images/s beside a plain Keras classifier; and the unseen-class protocol.

    python -m bench.quality [--part speed full unseen] [--set train.epochs=10 ...]

`full` records section `fashion_quality`; `speed` adds its throughput figures there; `unseen`
trains again with HOLDOUT_CLASSES held out and records `fashion_unseen`. The machine's load is
sampled during every part and written beside its figures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from bench.load import LoadSampler
from bench.results import fresh_workspace, load, record
from bench.train_speed import measure
from simrec.config import Settings
from simrec.evaluation.evaluate import evaluate
from simrec.evaluation.retrieval import retrieval_report
from simrec.index.build import build_catalog_index
from simrec.lake.fashion_mnist import ingest_fashion_mnist
from simrec.lake.tables import Lakehouse, TableVersion
from simrec.model.data import LabelledImages, read_split
from simrec.model.embedding import embed
from simrec.model.mirror import single_view
from simrec.model.train import split_validation, steps_per_epoch, train, training_rows
from simrec.runs import load_embedding_model

WORKSPACE = Path(__file__).resolve().parent / ".work" / "quality"
TARGET_RECALL_AT_1 = 0.93
TIME_BUDGET_S = 8 * 60
# Unseen-class protocol: one top, one shoe, one accessory never seen in training.
HOLDOUT_CLASSES = [0, 5, 8]
UNSEEN_MARGIN_OVER_PIXELS = 0.05
SEEN_TOLERANCE = 0.01
PARTS = ("speed", "full", "unseen")


def _pixels(rows: LabelledImages) -> np.ndarray:
    return rows.pixels.reshape(len(rows), -1).astype(np.float32) / 255.0


def split_report(
    query_vectors: np.ndarray,
    query_labels: np.ndarray,
    reference_vectors: np.ndarray,
    reference_labels: np.ndarray,
    holdout_classes: list[int],
    metric: str,
) -> dict[str, dict[str, float]]:
    """Recall@1 and MAP@R of queries of held-out classes (`unseen`) and of the other classes
    (`seen`), each computed on its own queries only, against every reference."""
    unseen = np.isin(query_labels, holdout_classes)
    return {
        name: {
            "queries": int(mask.sum()),
            **retrieval_report(
                query_vectors[mask],
                query_labels[mask],
                reference_vectors,
                reference_labels,
                [1],
                metric,
            ),
        }
        for name, mask in (("seen", ~unseen), ("unseen", unseen))
    }


def _prepare(overrides: list[str], workspace: Path) -> tuple[Settings, Lakehouse, TableVersion]:
    settings = fresh_workspace(workspace, overrides)
    lake = Lakehouse(settings.lake.root)
    table = ingest_fashion_mnist(lake, settings.fashion_mnist, settings.lake.fashion_table)
    return settings, lake, lake.pin(table.name, table.version)


def _train_timed(settings: Settings, lake: Lakehouse, table: TableVersion, name: str):
    with LoadSampler() as sampler:
        started = time.perf_counter()
        trained = train(settings, lake, table, run_name=name)
        seconds = time.perf_counter() - started
    return trained, seconds, sampler.summary()


def _test_and_catalog(settings: Settings, lake: Lakehouse, table: TableVersion):
    size, channels = settings.model.image_size, settings.model.channels
    return read_split(lake, table, "test", size, channels), read_split(
        lake, table, "train", size, channels
    )


def embedded_test_and_catalog(
    settings: Settings, lake: Lakehouse, table: TableVersion, run_id: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(query vectors, query labels, catalog vectors, catalog labels): the test split and the
    train split embedded by the run's logged model."""
    queries, catalog = _test_and_catalog(settings, lake, table)
    return _embedded(load_embedding_model(run_id), queries, catalog)


def _embedded(
    model: tf.keras.Model, queries: LabelledImages, catalog: LabelledImages
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (
        embed(model, queries.pixels),
        queries.labels,
        embed(model, catalog.pixels),
        catalog.labels,
    )


def run_speed(overrides: list[str]) -> dict[str, Any]:
    settings, lake, table = _prepare(overrides, WORKSPACE)
    rows, _ = split_validation(
        training_rows(lake, table, settings), settings.train.validation_fraction
    )
    with LoadSampler(every_s=2.0) as sampler:
        speed = measure(settings, rows)
    return {**speed, "load": sampler.summary()}


def run_full(overrides: list[str]) -> dict[str, Any]:
    settings, lake, table = _prepare(overrides, WORKSPACE)
    trained, train_seconds, load_during = _train_timed(settings, lake, table, "bench-quality")
    build_catalog_index(settings, lake, trained.run_id)
    report = evaluate(settings, lake, trained.run_id)
    queries, catalog = _test_and_catalog(settings, lake, table)
    model = load_embedding_model(trained.run_id)
    per_class = split_report(
        *_embedded(model, queries, catalog), HOLDOUT_CLASSES, settings.index.metric
    )
    # What model.mirror_average buys: the same trained network, each image embedded alone.
    single = retrieval_report(
        *_embedded(single_view(model), queries, catalog), [1, 5], settings.index.metric
    )
    return {
        "summary": {
            "recall_at_1": report.model["recall_at_1"],
            "recall_at_1_without_mirror_average": round(single["recall_at_1"], 4),
            "recall_at_5": report.model["recall_at_5"],
            "map_at_r": report.model["map_at_r"],
            "raw_pixel_recall_at_1": report.baseline["recall_at_1"],
            "raw_pixel_map_at_r": report.baseline["map_at_r"],
            "train_minutes": round(train_seconds / 60, 1),
            "load_average_1min_mean": load_during["load_average_1min"]["mean"],
            "target_recall_at_1_met": report.model["recall_at_1"] >= TARGET_RECALL_AT_1,
            "time_budget_met": train_seconds <= TIME_BUDGET_S,
        },
        "queries": report.queries,
        "best_epoch": trained.best_epoch,
        "best_val_recall_at_1": trained.val_recall_at_1,
        "load_during_training": load_during,
        # The full model on the queries the unseen protocol splits, for `fashion_unseen`.
        "holdout_split": {"holdout_classes": HOLDOUT_CLASSES, **per_class},
        "overrides": overrides,
        "model": settings.model.model_dump(),
        "train": settings.train.model_dump(),
    }


def with_full_model_steps(settings: Settings, lake: Lakehouse, table: TableVersion) -> Settings:
    """`settings` training as many optimizer steps as the full model (every class) trains.

    `train.epochs` counts passes over the training rows, so without this the held-out run
    (7 classes of 10) would stop after 70 % of the full model's steps, with its learning-rate
    schedule compressed to match: a shorter training, not only fewer classes. A
    `train.steps_per_epoch` set by the caller is kept."""
    if settings.train.steps_per_epoch:
        return settings
    every_class = settings.model_copy(
        update={"train": settings.train.model_copy(update={"holdout_classes": []})}
    )
    rows, _ = split_validation(
        training_rows(lake, table, every_class), settings.train.validation_fraction
    )
    steps = steps_per_epoch(every_class, len(rows))
    return settings.model_copy(
        update={"train": settings.train.model_copy(update={"steps_per_epoch": steps})}
    )


def run_unseen(overrides: list[str], full_model: dict[str, Any] | None) -> dict[str, Any]:
    settings, lake, table = _prepare(
        [*overrides, f"train.holdout_classes={HOLDOUT_CLASSES}"], WORKSPACE.parent / "unseen"
    )
    settings = with_full_model_steps(settings, lake, table)
    trained, train_seconds, load_during = _train_timed(settings, lake, table, "bench-unseen")
    queries, catalog = _test_and_catalog(settings, lake, table)  # index: every class
    model = load_embedding_model(trained.run_id)
    metric = settings.index.metric
    held_out = split_report(
        embed(model, queries.pixels),
        queries.labels,
        embed(model, catalog.pixels),
        catalog.labels,
        HOLDOUT_CLASSES,
        metric,
    )
    pixels = split_report(
        _pixels(queries), queries.labels, _pixels(catalog), catalog.labels, HOLDOUT_CLASSES, "l2"
    )
    full_seen = (full_model or {}).get("holdout_split", {}).get("seen", {}).get("recall_at_1")
    unseen_r1, pixel_r1 = held_out["unseen"]["recall_at_1"], pixels["unseen"]["recall_at_1"]
    seen_r1 = held_out["seen"]["recall_at_1"]
    return {
        "summary": {
            "holdout_classes": HOLDOUT_CLASSES,
            "unseen_recall_at_1": unseen_r1,
            "unseen_map_at_r": held_out["unseen"]["map_at_r"],
            "unseen_raw_pixel_recall_at_1": pixel_r1,
            "unseen_raw_pixel_map_at_r": pixels["unseen"]["map_at_r"],
            "seen_recall_at_1": seen_r1,
            "seen_recall_at_1_full_model": full_seen,
            "unseen_goal_met": unseen_r1 >= pixel_r1 + UNSEEN_MARGIN_OVER_PIXELS,
            "seen_goal_met": None if full_seen is None else seen_r1 >= full_seen - SEEN_TOLERANCE,
            "train_minutes": round(train_seconds / 60, 1),
            "train_steps": settings.train.epochs * settings.train.steps_per_epoch,
            "load_average_1min_mean": load_during["load_average_1min"]["mean"],
        },
        "model": held_out,
        "raw_pixels": pixels,
        "full_model_seen_from": "section fashion_quality (same default config)",
        "load_during_training": load_during,
        "overrides": overrides,
    }


def main(overrides: list[str], parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    quality = load().get("fashion_quality", {})
    if "full" in parts:
        quality = {"training_speed": quality.get("training_speed"), **run_full(overrides)}
        record("fashion_quality", quality)
    if "speed" in parts:
        quality = {**quality, "training_speed": run_speed(overrides)}
        summary = dict(quality.get("summary", {}))
        summary["images_per_s_vs_plain_classifier"] = quality["training_speed"][
            "simrec_vs_plain_classifier"
        ]
        quality["summary"] = summary
        record("fashion_quality", {k: v for k, v in quality.items() if k != "measured_at"})
    results = {"fashion_quality": quality}
    if "unseen" in parts:
        results["fashion_unseen"] = run_unseen(overrides, quality)
        record("fashion_unseen", results["fashion_unseen"])
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--part", dest="parts", nargs="*", choices=PARTS, default=list(PARTS))
    arguments = parser.parse_args()
    print(main(arguments.overrides, tuple(arguments.parts)))
