"""The evaluate step: test-split queries against the train-split index, beside a raw-pixel kNN
baseline on the same queries; metrics and a result grid logged to the training run."""

from __future__ import annotations

import json
from dataclasses import dataclass

import mlflow
import numpy as np

from simrec.config import Settings
from simrec.evaluation.plots import result_grid
from simrec.evaluation.retrieval import recall_at_k, retrieval_report
from simrec.index.build import catalog_labels
from simrec.lake.tables import Lakehouse
from simrec.model.data import LabelledImages, read_split
from simrec.model.embedding import embed
from simrec.runs import load_embedding_model, load_index, training_table
from simrec.tracking import setup_mlflow


@dataclass
class EvaluationReport:
    run_id: str
    queries: int
    model: dict[str, float]
    baseline: dict[str, float]

    def as_dict(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "queries": self.queries,
            "model": self.model,
            "raw_pixel_baseline": self.baseline,
        }


def _restrict(rows: LabelledImages, labels: list[int] | None, limit: int | None) -> LabelledImages:
    if labels:
        rows = rows.subset(np.isin(rows.labels, labels))
    if limit is not None:
        rows = rows.subset(np.arange(len(rows)) < limit)
    return rows


def _pixels_as_vectors(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(len(pixels), -1).astype(np.float32) / 255.0


def evaluate(settings: Settings, lake: Lakehouse, run_id: str) -> EvaluationReport:
    setup_mlflow(settings.mlflow)
    table = training_table(run_id)
    model = load_embedding_model(run_id)
    bundle = load_index(run_id)
    size, channels = settings.model.image_size, settings.model.channels
    labels = catalog_labels(settings)
    catalog = _restrict(read_split(lake, table, "train", size, channels), labels, None)
    queries = _restrict(
        read_split(lake, table, "test", size, channels), labels, settings.evaluation.max_queries
    )
    if len(queries) == 0:
        raise ValueError("no test queries to evaluate")
    print(f"evaluating {len(queries)} test queries against {len(bundle.index)} indexed items")
    recall_at = settings.evaluation.recall_at
    metric = settings.index.metric
    query_embeddings = embed(model, queries.pixels)
    catalog_embeddings = embed(model, catalog.pixels)

    # What users get: the faiss index's answers.
    found_ids, _ = bundle.index.search(query_embeddings, max(recall_at))
    label_of = dict(zip(bundle.items["id"], bundle.items["label"], strict=True))
    found_labels = np.vectorize(lambda item_id: label_of.get(item_id, -1), otypes=[np.int64])(
        found_ids
    )
    model_report = {
        f"recall_at_{k}": recall_at_k(queries.labels, found_labels, k) for k in recall_at
    }
    # Exact search for MAP@R (needs R ≈ thousands of results per query).
    exact = retrieval_report(
        query_embeddings,
        queries.labels,
        catalog_embeddings,
        catalog.labels,
        recall_at,
        metric,
        settings.evaluation.map_at_r,
    )
    model_report.update({f"exact_{name}": value for name, value in exact.items()})
    baseline_report = {}
    if settings.evaluation.baseline == "raw_pixels":
        baseline_report = retrieval_report(
            _pixels_as_vectors(queries.pixels),
            queries.labels,
            _pixels_as_vectors(catalog.pixels),
            catalog.labels,
            recall_at,
            "l2",
            settings.evaluation.map_at_r,
        )
    report = EvaluationReport(run_id, len(queries), model_report, baseline_report)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"test_{name}": value for name, value in model_report.items()})
        mlflow.log_metrics(
            {f"baseline_raw_pixels_{name}": value for name, value in baseline_report.items()}
        )
        mlflow.log_dict(report.as_dict(), "evaluation/report.json")
        mlflow.log_figure(
            _grid(settings, queries, found_ids, found_labels, catalog, table, lake),
            "evaluation/result_grid.png",
        )
    print(json.dumps(report.as_dict(), indent=2))
    return report


def _grid(
    settings: Settings,
    queries: LabelledImages,
    found_ids: np.ndarray,
    found_labels: np.ndarray,
    catalog: LabelledImages,
    table,
    lake: Lakehouse,
):
    count = min(settings.evaluation.grid_queries, len(queries))
    k = min(settings.evaluation.grid_k, found_ids.shape[1])
    position = {item_id: row for row, item_id in enumerate(catalog.ids)}
    names = lake.read(table.name, table.version, columns=["label", "label_name"]).to_pandas()
    name_of = dict(zip(names["label"], names["label_name"], strict=False))
    picks = np.linspace(0, len(queries) - 1, count).astype(int)
    return result_grid(
        queries.pixels[picks],
        [name_of.get(int(queries.labels[i]), str(queries.labels[i])) for i in picks],
        [[catalog.pixels[position[item_id]] for item_id in found_ids[i, :k]] for i in picks],
        [[name_of.get(int(label), str(label)) for label in found_labels[i, :k]] for i in picks],
        [[bool(label == queries.labels[i]) for label in found_labels[i, :k]] for i in picks],
    )
