"""The main job end to end, on the configured defaults: ingest → train → index → evaluate →
package and register the fashion model; then the furniture style indexes, registered too."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow

from simrec.config import Settings
from simrec.evaluation.evaluate import EvaluationReport, evaluate
from simrec.index.build import build_catalog_index
from simrec.lake.catalog import ingest_catalog
from simrec.lake.fashion_mnist import ingest_fashion_mnist
from simrec.lake.tables import Lakehouse, TableVersion
from simrec.model.train import TrainResult, train
from simrec.serving.package import PackageResult, package_run
from simrec.style.build import build_style
from simrec.style.pyfunc import REGISTERED_MODEL as STYLE_MODEL
from simrec.style.pyfunc import log_style_pyfunc
from simrec.tracking import resolve_tracking_uri


@dataclass
class PipelineResult:
    table: TableVersion
    training: TrainResult
    evaluation: EvaluationReport
    package: PackageResult
    style_model_uri: str | None = None


STYLE_ALIAS = "champion"  # what `simrec style register` and the app's style_model_uri use


def build_and_register_style(settings: Settings, lake: Lakehouse) -> str:
    """Gram-style indexes over the catalog, registered as the `simrec-style` pyfunc."""
    built = build_style(settings, lake)
    with mlflow.start_run(run_id=built.run_id):
        return log_style_pyfunc(built.folder, STYLE_MODEL, alias=STYLE_ALIAS, settings=settings)


def run_pipeline(settings: Settings, with_catalog: bool = True) -> PipelineResult:
    tracking_uri = resolve_tracking_uri(settings.mlflow.tracking_uri)
    lake = Lakehouse(settings.lake.root)
    print(f"[1/7] ingesting Fashion-MNIST into {lake.path(settings.lake.fashion_table)}")
    ingested = ingest_fashion_mnist(lake, settings.fashion_mnist, settings.lake.fashion_table)
    table = lake.pin(settings.lake.fashion_table, ingested.version)
    if with_catalog:
        where = settings.catalog.source_dir or "the verified download (catalog.cache_dir)"
        print(f"[2/7] ingesting the IKEA catalog from {where}")
        ingest_catalog(lake, settings.catalog, settings.lake)
    print(f"[3/7] training on {table.name} v{table.version}")
    training = train(settings, lake, table)
    print(f"[4/7] building the {settings.index.kind} index")
    build_catalog_index(settings, lake, training.run_id)
    print("[5/7] evaluating")
    report = evaluate(settings, lake, training.run_id)
    print(f"[6/7] packaging and registering {settings.serving.registered_model!r}")
    package = package_run(settings, lake, training.run_id)
    style_model_uri = None
    if with_catalog:
        print("[7/7] building and registering the furniture style recommender")
        style_model_uri = build_and_register_style(settings, lake)
    print(
        "\nDone.\n"
        f"  Delta tables : {lake.root}\n"
        f"  MLflow store : {tracking_uri} "
        f"(experiment {settings.mlflow.experiment!r}, run {training.run_id})\n"
        f"  Model        : {package.registry_uri} (version {package.version})\n"
        f"  Style model  : {style_model_uri or 'skipped (no catalog)'}\n"
        f"  Recall@1     : {report.model.get('recall_at_1', float('nan')):.4f} "
        f"(raw-pixel kNN {report.baseline.get('recall_at_1', float('nan')):.4f})\n"
        f"  Browse runs  : .venv/bin/mlflow ui --backend-store-uri {tracking_uri}"
    )
    return PipelineResult(table, training, report, package, style_model_uri)
