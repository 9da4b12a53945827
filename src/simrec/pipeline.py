"""The main job end to end, on the configured defaults: ingest → train → package (the catalog
embedded once) → evaluate that bundle → register as challenger → gate → promote the fashion
model; then the furniture style indexes, registered too."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from simrec.background import BackgroundStep
from simrec.config import Settings
from simrec.evaluation.evaluate import EvaluationReport
from simrec.lake.catalog import check_source, ingest_catalog, resolve_source
from simrec.lake.fashion_mnist import ingest_fashion_mnist
from simrec.lake.tables import Lakehouse, TableVersion
from simrec.model.train import TrainResult, train
from simrec.serving.package import PackageResult, package_run
from simrec.serving.style_promotion import register_style
from simrec.style.build import build_style
from simrec.tracking import resolve_tracking_uri, setup_mlflow

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    table: TableVersion
    training: TrainResult
    package: PackageResult
    tracking_uri: str
    style_model_uri: str | None = None
    style_promotion: Any = None  # PromotionResult of the style gate, when it ran
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per step, `*_s`

    @property
    def evaluation(self) -> EvaluationReport | None:
        return self.package.evaluation

    def summary(self, lake_root: str, experiment: str) -> str:
        report, promotion = self.evaluation, self.package.promotion
        recall = report.model.get("recall_at_1", float("nan")) if report else float("nan")
        baseline = report.baseline.get("recall_at_1", float("nan")) if report else float("nan")
        return (
            "Done.\n"
            f"  Delta tables : {lake_root}\n"
            f"  MLflow store : {self.tracking_uri} "
            f"(experiment {experiment!r}, run {self.training.run_id})\n"
            f"  Model        : {self.package.registry_uri} (version {self.package.version})\n"
            f"  Gate         : {promotion.summary() if promotion else 'not run'}\n"
            f"  Style model  : {self.style_model_uri or 'skipped (no catalog)'}\n"
            f"  Style gate   : "
            f"{self.style_promotion.summary() if self.style_promotion else 'not run'}\n"
            f"  Recall@1     : {recall:.4f} (raw-pixel kNN {baseline:.4f}, bundle evaluated)\n"
            f"  Browse runs  : .venv/bin/mlflow ui --backend-store-uri {self.tracking_uri}"
        )


def build_and_register_style(settings: Settings, promote: bool = True):
    """The style bundle `style build` makes (the featurizer chosen on held-out rooms, or Gram
    vectors for a catalog too small to choose on), registered as the style pyfunc and gated.
    Takes the settings alone (the lake is opened here), so it can run in a child process."""
    lake = Lakehouse(settings.lake.root)
    built = build_style(settings, lake)
    return register_style(settings, lake, built.run_id, built.folder, promote)


def furniture_step(settings: Settings, promote: bool = True) -> tuple[Any, Any, dict[str, float]]:
    """The furniture half, which needs nothing of the fashion model: ingest the IKEA catalog,
    then build, register and gate its style model. Returns the style model's URI, the gate's
    result and the wall seconds of both parts (`ingest_catalog_s`,
    `style_build_and_register_s`). Takes the settings alone, so it can run in a child."""
    timings: dict[str, float] = {}
    lap = _Laps(timings)
    where = settings.catalog.source_dir or "the verified download (catalog.cache_dir)"
    log.info("ingesting the IKEA catalog from %s", where)
    ingest_catalog(Lakehouse(settings.lake.root), settings.catalog, settings.lake)
    lap("ingest_catalog_s")
    log.info("building and registering the furniture style recommender")
    style_model_uri, style_promotion = build_and_register_style(settings, promote)
    lap("style_build_and_register_s")
    return style_model_uri, style_promotion, timings


def with_catalog_source(settings: Settings) -> Settings:
    """`settings` with `catalog.source_dir` resolved to a checked folder (downloaded and
    verified first when it is null): a wrong path or a failed download ends the pipeline
    before training, not at the wait for the furniture half minutes later."""
    source = resolve_source(settings.catalog)
    check_source(source)
    return settings.with_overrides({"catalog.source_dir": str(source)})


def run_pipeline(
    settings: Settings, with_catalog: bool = True, promote: bool = True
) -> PipelineResult:
    """train → package (catalog embedded once) → evaluate the bundle → register as challenger
    → gate → promote; the furniture half (catalog ingest, style model built, registered and
    gated) runs beside the ingest and training (`pipeline.style_beside_training`) or after
    them. Progress goes to this module's log."""
    tracking_uri = resolve_tracking_uri(settings.mlflow.tracking_uri)
    setup_mlflow(settings.mlflow)  # the store and experiment exist before the child opens them
    lake = Lakehouse(settings.lake.root)
    timings: dict[str, float] = {}
    lap = _Laps(timings)
    furniture_settings = with_catalog_source(settings) if with_catalog else settings
    with ExitStack() as stack:
        furniture = None
        if with_catalog and settings.pipeline.style_beside_training:
            # Started first: the Fashion-MNIST ingest below leaves a core idle for it.
            furniture = stack.enter_context(
                BackgroundStep(
                    "furniture catalog ingest + style build + registration",
                    furniture_step,
                    furniture_settings,
                    promote,
                    priority=settings.pipeline.background_priority,
                    threads=settings.pipeline.background_threads,
                )
            )
        beside = " (step 4, the furniture half, runs beside it)" if furniture else ""
        fashion_table = lake.path(settings.lake.fashion_table)
        log.info("[1/4] ingesting Fashion-MNIST into %s%s", fashion_table, beside)
        ingested = ingest_fashion_mnist(lake, settings.fashion_mnist, settings.lake.fashion_table)
        table = lake.pin(settings.lake.fashion_table, ingested.version)
        lap("ingest_fashion_mnist_s")
        log.info("[2/4] training on %s v%s%s", table.name, table.version, beside)
        training = train(settings, lake, table)
        lap("train_s")
        log.info("[3/4] packaging, evaluating and gating %r", settings.serving.registered_model)
        package = package_run(settings, lake, training.run_id, promote=promote)
        timings.update({step: round(value, 1) for step, value in package.timings.items()})
        lap.restart()
        style_model_uri = style_promotion = None
        if furniture is not None:
            log.info("[4/4] waiting for the furniture half, run beside ingest and training")
            style_model_uri, style_promotion, furniture_s = furniture.result()
            lap("style_wait_s")
            timings.update(furniture_s)  # seconds spent beside the steps above
            timings["furniture_beside_s"] = round(sum(furniture_s.values()), 1)
        elif with_catalog:
            log.info("[4/4] the furniture half: catalog ingest, style model")
            style_model_uri, style_promotion, furniture_s = furniture_step(
                furniture_settings, promote
            )
            timings.update(furniture_s)
            lap.restart()
    timings["total_s"] = round(lap.total(), 1)
    return PipelineResult(
        table, training, package, tracking_uri, style_model_uri, style_promotion, timings
    )


class _Laps:
    """Wall seconds of consecutive steps, written into `timings` as each one ends."""

    def __init__(self, timings: dict[str, float]):
        self.timings = timings
        self.started = self.mark = time.perf_counter()

    def __call__(self, step: str) -> None:
        now = time.perf_counter()
        self.timings[step] = round(now - self.mark, 1)
        self.mark = now

    def restart(self) -> None:
        self.mark = time.perf_counter()

    def total(self) -> float:
        return time.perf_counter() - self.started
