"""The evaluate step: a bundle scored through its own search path (`simrec.evaluation.bundle`)
on its fixed query set, beside raw-pixel kNN on the same queries; metrics, a result grid and a
2-D embedding map logged to a run (and as tags on a registered version).

`evaluate_bundle` scores a registered bundle (what `simrec package` and `simrec promote` do);
`evaluate` scores a training run's `simrec index` output assembled into the same
`EmbeddingSearchModel` the bundle loads, so both paths run exactly the same code."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import numpy as np
from mlflow.pyfunc import PythonModelContext

from simrec.config import Settings
from simrec.evaluation.bundle import (
    LABEL_NAME_COLUMN,
    BundleScore,
    catalog_pixels,
    load_search_model,
    raw_pixel_baseline,
    score_bundle,
)
from simrec.evaluation.decoded import DecodedItems
from simrec.evaluation.plots import embedding_map, result_grid
from simrec.evaluation.queries import query_set_for, read_query_set
from simrec.lake.tables import Lakehouse
from simrec.serving.pyfunc import EmbeddingSearchModel
from simrec.tracking import setup_mlflow

log = logging.getLogger(__name__)

TAG_PREFIX = "simrec.eval."  # registered-version tags holding the bundle's figures


@dataclass
class EvaluationReport:
    run_id: str
    queries: int
    model: dict[str, float]
    baseline: dict[str, float]
    per_class: dict[int, float]
    score: BundleScore | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "run_id": self.run_id,
            "queries": self.queries,
            "model": self.model,
            "raw_pixel_baseline": self.baseline,
            "per_class_recall": {str(label): value for label, value in self.per_class.items()},
        }

    def flat_metrics(self) -> dict[str, float]:
        """Everything as MLflow metric names: `test_*`, `baseline_raw_pixels_*`, per class."""
        first = next(iter(self.model))
        return {
            **{f"test_{name}": value for name, value in self.model.items()},
            **{f"baseline_raw_pixels_{name}": value for name, value in self.baseline.items()},
            **{f"test_{first}_class_{label}": value for label, value in self.per_class.items()},
        }


def score_with_baseline(
    settings: Settings,
    model: EmbeddingSearchModel,
    lineage: dict[str, Any],
    decoded: DecodedItems | None = None,
) -> BundleScore:
    """`model` scored on its fixed query set, with the raw-pixel baseline when configured
    (`decoded`: the catalog's images, already decoded as queries are)."""
    queries = query_set_for(lineage, settings.evaluation.max_queries)
    score = score_bundle(model, queries, settings.evaluation, settings.train.holdout_classes)
    if settings.evaluation.baseline == "raw_pixels":
        items = catalog_pixels(model, lineage, model.index.live_item_ids(), decoded)
        score.baseline = raw_pixel_baseline(score, model, items, settings.evaluation)
    return score


def log_evaluation(
    settings: Settings,
    model: EmbeddingSearchModel,
    lineage: dict[str, Any],
    score: BundleScore,
    run_id: str,
    decoded: DecodedItems | None = None,
) -> EvaluationReport:
    """Metrics, the report and the two figures on run `run_id`."""
    report = EvaluationReport(
        run_id, len(score.queries), score.metrics, score.baseline, score.per_class, score
    )
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        mlflow.log_metrics(report.flat_metrics())
        mlflow.log_dict(report.as_dict(), "evaluation/report.json")
        figures = {
            "evaluation/result_grid.png": _grid(settings, model, lineage, score, decoded),
            "evaluation/embedding_map.png": _map(settings, model, score),
        }
        for artifact, figure in figures.items():
            mlflow.log_figure(figure, artifact)
            plt.close(figure)  # a long-lived process (server, notebook) must not keep them
    log.info(
        "Recall@1 %.4f on %d queries (raw-pixel kNN %.4f)",
        score.metrics.get("recall_at_1", float("nan")),
        len(score.queries),
        score.baseline.get("recall_at_1", float("nan")),
    )
    return report


def tag_version(name: str, version: int, report: EvaluationReport) -> None:
    """The figures as tags on the registered version, so the registry page shows quality."""
    client = mlflow.MlflowClient()
    tags = {"queries": report.queries, **report.model}
    tags.update({f"baseline_raw_pixels_{k}": v for k, v in report.baseline.items()})
    for key, value in tags.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        client.set_model_version_tag(name, str(version), f"{TAG_PREFIX}{key}", shown)


def evaluate_bundle(
    settings: Settings,
    model_uri: str,
    lineage: dict[str, Any],
    run_id: str,
    decoded: DecodedItems | None = None,
) -> EvaluationReport:
    """Load `model_uri` as the server does, score it and log the figures on `run_id`
    (`decoded`: its catalog's images, when the caller decoded them already)."""
    model = load_search_model(model_uri)
    score = score_with_baseline(settings, model, lineage, decoded)
    return log_evaluation(settings, model, lineage, score, run_id, decoded)


def run_search_model(settings: Settings, run_id: str, folder: Path) -> EmbeddingSearchModel:
    """The `EmbeddingSearchModel` of a run's `simrec index` output (same code as a bundle)."""
    from simrec.index.build import run_artifacts
    from simrec.serving.package import bundle_config

    model = EmbeddingSearchModel()
    model.load_context(
        PythonModelContext(
            artifacts=run_artifacts(run_id, folder),
            model_config=bundle_config(settings).model_dump(),
        )
    )
    return model


def evaluate(settings: Settings, lake: Lakehouse, run_id: str) -> EvaluationReport:
    """Score a training run's index (built by `simrec index`) on the run's test split."""
    from simrec.runs import training_table

    setup_mlflow(settings.mlflow)
    table = training_table(run_id)
    lineage = {
        "training_run_id": run_id,
        "source_table": table.name,
        "source_table_path": table.path,
        "source_table_version": table.version,
    }
    with tempfile.TemporaryDirectory(prefix="simrec-evaluate-") as workdir:
        model = run_search_model(settings, run_id, Path(workdir))
        queries = read_query_set(table, settings.evaluation.max_queries)
        score = score_bundle(model, queries, settings.evaluation, settings.train.holdout_classes)
        if settings.evaluation.baseline == "raw_pixels":
            items = catalog_pixels(model, lineage, model.index.live_item_ids())
            score.baseline = raw_pixel_baseline(score, model, items, settings.evaluation)
        return log_evaluation(settings, model, lineage, score, run_id)


def _names(model: EmbeddingSearchModel, item_ids: list[str]) -> dict[int, str]:
    from simrec.index.scope import LABEL_COLUMN

    try:
        names = model.item_metadata(item_ids, LABEL_NAME_COLUMN)
    except KeyError:
        return {}
    labels = model.item_metadata(item_ids, LABEL_COLUMN)
    return {int(label): str(name) for label, name in zip(labels, names, strict=True)}


def _grid(
    settings: Settings,
    model: EmbeddingSearchModel,
    lineage: dict[str, Any],
    score: BundleScore,
    decoded: DecodedItems | None = None,
):
    queries = score.queries
    count = min(settings.evaluation.grid_queries, len(queries))
    k = min(settings.evaluation.grid_k, score.found_ids.shape[1])
    picks = np.linspace(0, len(queries) - 1, count).astype(int)
    shown = [[item for item in score.found_ids[i, :k] if item is not None] for i in picks]
    needed = sorted({item for row in shown for item in row})
    pixels = dict(zip(needed, catalog_pixels(model, lineage, needed, decoded), strict=True))
    name_of = _names(model, model.index.live_item_ids())

    def title(label: int) -> str:
        return name_of.get(int(label), str(label))

    return result_grid(
        score.query_pixels[picks],
        [title(queries.labels[i]) for i in picks],
        [[pixels[item] for item in row] for row in shown],
        [
            [title(label) for label in score.found_labels[i, : len(row)]]
            for i, row in zip(picks, shown, strict=True)
        ],
        [
            [bool(label == queries.labels[i]) for label in score.found_labels[i, : len(row)]]
            for i, row in zip(picks, shown, strict=True)
        ],
    )


def _map(settings: Settings, model: EmbeddingSearchModel, score: BundleScore):
    rng = np.random.default_rng(settings.evaluation.map_seed)
    count = min(settings.evaluation.map_points, len(score.queries))
    sample = np.sort(rng.choice(len(score.queries), size=count, replace=False))
    name_of = _names(model, model.index.live_item_ids())
    return embedding_map(score.query_embeddings[sample], score.queries.labels[sample], name_of)
