"""Hyperparameter search: the space from conf/, SparkTrials on real local Spark, every trial a
nested MLflow run, failing trials recorded without stopping the search, best.yaml → train."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
from hyperopt.pyll import stochastic
from typer.testing import CliRunner

from simrec.cli import app
from simrec.config import load_overrides_file, load_settings
from simrec.model.data import read_split, validation_mask
from simrec.tuning.objective import describe_error, plain_values
from simrec.tuning.search import tune
from simrec.tuning.space import point_to_assignment, search_space

# Trials small enough for CI: the cost is process start, imports and graph building.
TINY_TRIALS = {
    "train.max_rows": 600,
    "train.epochs": 2,
    "train.steps_per_epoch": 8,
    "model.conv_filters": [8, 16],
    "model.embedding_dim": 16,
}
TINY_SPACE = {
    "train": {
        "learning_rate": {"type": "loguniform", "low": 3e-4, "high": 3e-3},
        "loss_alpha": {"type": "uniform", "low": 1.0, "high": 3.0},
    },
    "model": {"dropout": {"type": "uniform", "low": 0.0, "high": 0.5}},
}


# Knob shapes the default space may not hold: whole-number quniform, a choice among lists.
SHAPED_KNOBS = [
    "tuning.space.train={learning_rate: {type: loguniform, low: 0.001, high: 0.01},"
    " epochs: {type: quniform, low: 2, high: 8, q: 1},"
    " examples_per_class: {type: quniform, low: 4, high: 32, q: 4}}",
    "tuning.space.model={conv_filters: {type: choice, options: [[32, 64], [32, 64, 128]]},"
    " dropout: {type: uniform, low: 0.0, high: 0.3}}",
]


def _sample_and_check(settings) -> list[dict]:
    dimensions = settings.tuning.dimensions()
    space = search_space(settings)
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(50):
        knobs = plain_values(stochastic.sample(space, rng=rng))
        assert set(knobs) == set(dimensions)
        for key, value in knobs.items():
            dimension = dimensions[key]
            if dimension.type == "choice":
                assert value in dimension.options
            else:
                assert dimension.low <= value <= dimension.high, (key, value)
        settings.with_overrides(knobs)  # every sample is a valid configuration
        samples.append(knobs)
    return samples


def test_default_space_samples_stay_within_the_configured_bounds() -> None:
    _sample_and_check(load_settings())


def test_whole_number_and_list_knobs_sample_as_such() -> None:
    for knobs in _sample_and_check(load_settings(overrides=SHAPED_KNOBS)):
        assert isinstance(knobs["train.epochs"], int)  # whole-number quniform → int
        assert knobs["train.examples_per_class"] % 4 == 0
        assert isinstance(knobs["model.conv_filters"], list)


def test_space_is_validated_and_overridable_per_run() -> None:
    settings = load_settings(
        overrides=["tuning.space.model.dropout=null", "tuning.space.train.learning_rate.high=0.01"]
    )
    assert "model.dropout" not in settings.tuning.dimensions()
    assert settings.tuning.dimensions()["train.learning_rate"].high == 0.01
    with pytest.raises(ValueError, match="not a setting that can be tuned"):
        load_settings(overrides=["tuning.space.train={lr: {type: choice, options: [1]}}"])
    with pytest.raises(ValueError, match="low < high"):
        load_settings(overrides=["tuning.space.model.dropout={type: uniform, low: 1, high: 0}"])
    with pytest.raises(ValueError, match="not in tuning.space"):
        load_settings(overrides=["tuning.points_to_evaluate=[{train.seed: 3}]"])


def test_points_to_evaluate_take_knob_values_and_fill_in_the_configured_ones() -> None:
    settings = load_settings(overrides=SHAPED_KNOBS)
    assignment = point_to_assignment(settings, {"model.conv_filters": [32, 64]})
    options = settings.tuning.dimensions()["model.conv_filters"].options
    assert assignment["model.conv_filters"] == options.index([32, 64])  # hyperopt wants the index
    assert assignment["train.learning_rate"] == settings.train.learning_rate
    with pytest.raises(ValueError, match="not one of the choices"):
        point_to_assignment(load_settings(), {"model.embedding_dim": 7})


def test_failure_reasons_are_one_readable_line() -> None:
    assert describe_error(ValueError("bad value")) == "ValueError: bad value"
    assert describe_error(KeyError()) == "KeyError"
    layer_error = ValueError(
        'Exception encountered when calling layer "pool".\n\nNegative dimension size.\n\n'
        "Call arguments received: ..."
    )
    assert describe_error(layer_error) == (
        'ValueError: Exception encountered when calling layer "pool". Negative dimension size.'
    )
    keras_style = ValueError(
        "in user code:\n\n    File 'x.py', line 1\n\n"
        "    ValueError: Exception encountered when calling layer 'drop'.\n\n"
        "    `rate` must be in [0, 1). Received: rate=1.0\n\n    Call arguments: ...\n"
    )
    assert describe_error(keras_style) == (
        "ValueError: Exception encountered when calling layer 'drop'. "
        "`rate` must be in [0, 1). Received: rate=1.0"
    )


@pytest.fixture(scope="module")
def spark_search(fashion_lake, spark, tmp_path_factory, make_settings):
    _, lake, table = fashion_lake
    root = tmp_path_factory.mktemp("tune")
    settings = make_settings(
        root,
        **{"lake.root": str(lake.root)},
        **TINY_TRIALS,
        **{
            "tuning.trials": "spark",
            "tuning.max_evals": 4,
            "tuning.parallelism": 2,
            "tuning.space": TINY_SPACE,
            # Two trials that must fail, run first: Keras rejects dropout 1.0 (an exception),
            # and MultiSimilarityLoss divides by alpha (an infinite loss).
            "tuning.points_to_evaluate": [{"model.dropout": 1.0}, {"train.loss_alpha": 0.0}],
        },
    )
    result = tune(settings, lake, table, spark=spark, best_params_path=root / "best.yaml")
    return settings, lake, table, result


@pytest.mark.slow
def test_spark_search_logs_a_nested_run_per_trial_and_survives_failures(spark_search) -> None:
    settings, lake, table, result = spark_search
    client = mlflow.MlflowClient()
    children = client.search_runs(
        [mlflow.get_run(result.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'",
    )
    assert len(children) == 4 and len(result.trials) == 4
    by_id = {child.info.run_id: child for child in children}
    assert {trial.run_id for trial in result.trials} == set(by_id)

    # Trials ran in Spark's Python workers, not in this process.
    assert all(child.data.tags["simrec.trial.pid"] != str(os.getpid()) for child in children)
    # Scored on the validation rows carved from the (sliced) train split, never on test.
    train_ids = read_split(lake, table, "train", 28, 1, max_rows=settings.train.max_rows).ids
    expected_validation = int(validation_mask(train_ids, settings.tuning.validation_fraction).sum())
    for child in children:
        assert "trial_seconds" in child.data.metrics
        assert child.data.params["validation_rows"] == str(expected_validation)
        assert child.data.tags["simrec.step"] == "tune-trial"

    exception, diverged, *succeeded = sorted(result.trials, key=lambda trial: trial.tid)
    assert exception.status == "fail" and "rate=1.0" in exception.failure
    assert diverged.status == "fail" and "training loss became inf" in diverged.failure
    for failed in (exception, diverged):
        run = by_id[failed.run_id]
        assert run.info.status == "FAILED"
        assert run.data.tags["simrec.failure"] == failed.failure
    assert len(succeeded) == 2
    for trial in succeeded:
        run = by_id[trial.run_id]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["best_val_recall_at_1"] == pytest.approx(trial.val_recall_at_1)
        history = client.get_metric_history(trial.run_id, "val_recall_at_1")
        assert len(history) == settings.train.epochs
        assert {key: run.data.params[key] for key in trial.params} == {
            key: str(value) for key, value in trial.params.items()
        }

    # The parent's best is the best child, and best.yaml holds that child's knobs.
    best_child = max(succeeded, key=lambda trial: trial.val_recall_at_1)
    parent = mlflow.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_val_recall_at_1"] == pytest.approx(best_child.val_recall_at_1)
    assert parent.data.metrics["trials_failed"] == 2
    assert parent.data.tags["simrec.tuning.best_trial_run_id"] == best_child.run_id
    assert {key: parent.data.params[f"best.{key}"] for key in best_child.params} == {
        key: str(value) for key, value in best_child.params.items()
    }
    assert result.best_params == best_child.params
    assert load_overrides_file(result.best_params_path) == best_child.params
    artifacts = {artifact.path for artifact in client.list_artifacts(result.run_id)}
    assert {"best.yaml", "trials.json"} <= artifacts


@pytest.mark.slow
def test_cli_tunes_locally_and_train_applies_the_best_params(fashion_lake, tmp_path: Path) -> None:
    _, lake, _ = fashion_lake
    tiny = {**TINY_TRIALS, "train.epochs": 1, "tuning.space": TINY_SPACE}
    overrides = [
        f"--set=lake.root={lake.root}",
        f"--set=mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"--set=mlflow.artifact_root={tmp_path / 'mlruns'}",
        *(f"--set={key}={json.dumps(value)}" for key, value in tiny.items()),  # JSON is YAML
    ]
    best_file = tmp_path / "best.yaml"
    runner = CliRunner()
    outcome = runner.invoke(
        app,
        ["tune", "--trials", "local", "--max-evals", "1", "--output", str(best_file), *overrides],
    )
    assert outcome.exit_code == 0, outcome.output
    assert "best validation Recall@1" in outcome.output and best_file.is_file()
    best = load_overrides_file(best_file)
    assert set(best) == {"train.learning_rate", "train.loss_alpha", "model.dropout"}

    # --params applies the file; an explicit --set still wins over it.
    outcome = runner.invoke(
        app,
        ["train", "--params", str(best_file), *overrides, "--set=train.loss_alpha=2.5"],
    )
    assert outcome.exit_code == 0, outcome.output
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(
        experiment_names=["simrec"],
        filter_string="tags.`simrec.step` = 'train'",
        output_format="list",
    )
    assert len(runs) == 1
    params = runs[0].data.params
    assert float(params["train.learning_rate"]) == best["train.learning_rate"]
    assert float(params["model.dropout"]) == best["model.dropout"]
    assert params["train.loss_alpha"] == "2.5"

    bad = tmp_path / "bad.yaml"
    bad.write_text("train.no_such_knob: 1\n")
    outcome = runner.invoke(app, ["train", "--params", str(bad), *overrides])
    assert outcome.exit_code == 1 and "unknown config key" in outcome.output
