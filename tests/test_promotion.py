"""The promotion gate on real registered bundles: a small model trained on real Fashion-MNIST
rows is packaged, scored through its own pyfunc and promoted; a deliberately worse one (0
training epochs: the untrained network) is refused and `champion` stays; `--force` overrides;
a better one is promoted."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from simrec.cli import app
from simrec.config import configured_section
from simrec.evaluation.bundle import (
    catalog_pixels,
    load_search_model,
    raw_pixel_baseline,
    score_bundle,
)
from simrec.evaluation.queries import query_set_for
from simrec.model.train import train
from simrec.serving.bundle import registered_lineage, resolve_version
from simrec.serving.package import package_run
from simrec.serving.promotion import decide

NAME = "simrec-fashion"
CHAMPION = f"models:/{NAME}@champion"
CHALLENGER = f"models:/{NAME}@challenger"


@pytest.fixture(scope="module")
def registry(fashion_lake, tmp_path_factory, make_settings):
    """v1: a trained model (promoted on the baseline alone); v2: an untrained one (refused)."""
    _, lake, table = fashion_lake
    # Trained long enough to clear raw-pixel kNN by the gate's margin (the shared small
    # schedule lands level with it).
    settings = make_settings(
        tmp_path_factory.mktemp("promotion"),
        **{
            "lake.root": str(lake.root),
            "train.epochs": 4,
            "train.steps_per_epoch": 100,
            "train.learning_rate": 0.003,
        },
    )
    good = train(settings, lake, table)
    first = package_run(settings, lake, good.run_id)
    untrained = train(settings.with_overrides({"train.epochs": 0}), lake, table)
    worse = package_run(settings, lake, untrained.run_id)
    return settings, lake, table, first, worse


def _store(settings) -> list[str]:
    return [
        f"--set=mlflow.tracking_uri={settings.mlflow.tracking_uri}",
        f"--set=mlflow.artifact_root={settings.mlflow.artifact_root}",
        f"--set=lake.root={settings.lake.root}",
    ]


def test_first_version_passes_on_the_baseline_alone(registry) -> None:
    settings, _, _, first, _ = registry
    decision = first.promotion.decision
    assert first.promotion.promoted and decision.passed
    assert decision.champion is None and decision.champion_version is None
    assert decision.challenger >= decision.baseline + settings.promotion.min_margin_over_baseline
    assert first.registry_uri == CHAMPION and first.version == 1
    # The figures are the bundle's own: on the package run and as registered-version tags.
    run = mlflow.get_run(first.run_id)
    assert run.data.metrics["test_recall_at_1"] == pytest.approx(decision.challenger)
    assert run.data.metrics["baseline_raw_pixels_recall_at_1"] == pytest.approx(decision.baseline)
    assert "test_map_at_r" in run.data.metrics
    assert {f"test_recall_at_1_class_{label}" for label in range(10)} <= set(run.data.metrics)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(first.run_id, "evaluation")}
    assert {"evaluation/result_grid.png", "evaluation/embedding_map.png"} <= artifacts
    tags = mlflow.MlflowClient().get_model_version(NAME, "1").tags
    assert float(tags["simrec.eval.recall_at_1"]) == pytest.approx(decision.challenger, abs=1e-4)
    assert tags["simrec.promotion"] == "promoted"


def test_the_figures_are_those_of_the_served_model(registry) -> None:
    """Re-scoring the champion as the gate does gives the figures logged at packaging."""
    settings, _, _, first, _ = registry
    model = load_search_model(CHAMPION)
    queries = query_set_for(registered_lineage(CHAMPION), settings.evaluation.max_queries)
    rescored = score_bundle(model, queries, settings.evaluation)
    assert rescored.metrics == pytest.approx(first.evaluation.model)
    assert len(queries) == first.evaluation.queries == 3000
    # Packaging handed its decoded catalog to the baseline; read from the table, the same.
    items = catalog_pixels(model, registered_lineage(CHAMPION), model.index.live_item_ids())
    baseline = raw_pixel_baseline(rescored, model, items, settings.evaluation)
    assert baseline == pytest.approx(first.evaluation.baseline)


def test_a_worse_challenger_is_refused_and_champion_stays(registry) -> None:
    _, _, _, first, worse = registry
    decision = worse.promotion.decision
    assert not worse.promotion.promoted and not decision.passed
    assert decision.champion_version == first.version
    # The champion was re-scored on the same queries: the same figure as when it was packaged.
    assert decision.champion == pytest.approx(first.promotion.decision.challenger)
    assert decision.challenger < decision.champion - 0.05
    assert resolve_version(CHAMPION).version == first.version
    assert resolve_version(CHALLENGER).version == worse.version == 2
    assert worse.registry_uri == CHALLENGER
    tags = mlflow.MlflowClient().get_model_version(NAME, "2").tags
    assert tags["simrec.promotion"] == "refused"


def test_promote_command_refuses_with_both_figures_then_force_overrides(registry) -> None:
    settings, _, _, first, worse = registry
    refused = CliRunner().invoke(app, ["promote", "--model", NAME, *_store(settings)])
    assert refused.exit_code == 1, refused.output
    assert "gate refused" in refused.output
    challenger, champion = worse.promotion.decision.challenger, first.promotion.decision.challenger
    assert f"challenger {challenger:.4f}" in refused.output
    assert f"champion v1 {champion:.4f}" in refused.output
    assert "raw-pixel kNN" in refused.output and "worse than champion v1" in refused.output
    assert resolve_version(CHAMPION).version == 1

    forced = CliRunner().invoke(app, ["promote", "--force", *_store(settings)])
    assert forced.exit_code == 0, forced.output
    assert "(forced)" in forced.output
    assert resolve_version(CHAMPION).version == 2
    assert mlflow.MlflowClient().get_model_version(NAME, "2").tags["simrec.promotion"] == "forced"


def test_a_better_challenger_is_promoted(registry) -> None:
    """After the forced bad champion (v2), a trained model beats it and is promoted."""
    settings, lake, _, first, _ = registry
    assert resolve_version(CHAMPION).version == 2
    better = package_run(settings, lake, first.lineage["training_run_id"])
    decision = better.promotion.decision
    assert better.promotion.promoted and decision.champion_version == 2
    assert decision.challenger > decision.champion
    assert resolve_version(CHAMPION).version == better.version == 3


def test_package_no_promote_stays_challenger(registry) -> None:
    settings, _, _, first, _ = registry
    champion_before = resolve_version(CHAMPION).version
    outcome = CliRunner().invoke(
        app,
        [
            "package",
            "--run-id",
            first.lineage["training_run_id"],
            "--no-promote",
            *_store(settings),
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    assert resolve_version(CHAMPION).version == champion_before
    assert resolve_version(CHALLENGER).version == champion_before + 1


@pytest.mark.parametrize(
    ("challenger", "baseline", "champion", "passes"),
    [
        (0.80, 0.78, None, True),  # first version: the baseline alone, margin 0.01 met
        (0.785, 0.78, None, False),  # beats the baseline, but not by the margin
        (0.80, 0.78, 0.804, True),  # within the regression tolerance
        (0.80, 0.78, 0.806, False),  # beyond it
        (0.80, None, 0.806, False),  # re-index gate: no baseline check, regression refused
        (0.70, None, 0.70, True),
    ],
)
def test_decide(challenger, baseline, champion, passes) -> None:
    rules = configured_section(
        "promotion", metric="recall_at_1", min_margin_over_baseline=0.01, max_regression=0.005
    )
    decision = decide("recall_at_1", challenger, baseline, champion, 1, rules)
    assert decision.passed is passes
    assert bool(decision.reasons) is not passes
    assert np.isfinite(decision.challenger)
