"""The unseen-class protocol: held-out classes never reach training (nor the validation rows
that pick the best epoch), and its report keeps seen and unseen figures apart."""

from __future__ import annotations

import numpy as np
import pytest

import simrec.model.train as training
from bench.quality import split_report, with_full_model_steps
from simrec.model.train import train

HOLDOUT = [0, 5, 8]


def test_held_out_classes_never_reach_training(
    fashion_lake, tmp_path, make_settings, monkeypatch
) -> None:
    _, lake, table = fashion_lake
    settings = make_settings(
        tmp_path,
        **{
            "lake.root": str(lake.root),
            "train.holdout_classes": HOLDOUT,
            "train.epochs": 1,
            "train.steps_per_epoch": 5,
        },
    )
    fed: dict[str, np.ndarray] = {}
    real_fit, real_batches = training.fit_and_validate, training.training_batches

    def fit_spy(settings, train_rows, validation_rows, *args, **kwargs):
        fed["train_rows"], fed["validation_rows"] = train_rows.labels, validation_rows.labels
        return real_fit(settings, train_rows, validation_rows, *args, **kwargs)

    def batches_spy(rows, settings, steps_per_epoch):
        dataset = real_batches(rows, settings, steps_per_epoch)
        # The batches are drawn statelessly from (seed, step): these are the ones fit sees.
        fed["batches"] = np.concatenate([labels.numpy() for _, labels in dataset])
        return dataset

    monkeypatch.setattr(training, "fit_and_validate", fit_spy)
    monkeypatch.setattr(training, "training_batches", batches_spy)
    train(settings, lake, table, run_name="unseen-protocol")

    for name, labels in fed.items():
        assert not np.isin(labels, HOLDOUT).any(), f"held-out class in {name}"
    seen = sorted(set(range(10)) - set(HOLDOUT))
    assert sorted(np.unique(fed["batches"])) == seen  # and every seen class was trained on
    assert len(fed["batches"]) == 5 * len(seen) * 8  # steps × classes per batch × examples


def test_split_report_keeps_seen_and_unseen_apart() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 30)
    # Seen classes: one clean direction each (perfect retrieval); unseen: pure noise.
    vectors = rng.normal(size=(len(labels), 16)).astype(np.float32)
    seen = ~np.isin(labels, HOLDOUT)
    vectors[seen] = np.eye(16, dtype=np.float32)[labels[seen]]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors + rng.normal(scale=0.01, size=vectors.shape).astype(np.float32)

    report = split_report(queries, labels, vectors, labels, HOLDOUT, "ip")

    assert report["seen"]["queries"] == 7 * 30 and report["unseen"]["queries"] == 3 * 30
    assert report["seen"]["recall_at_1"] == pytest.approx(1.0)
    assert report["seen"]["map_at_r"] == pytest.approx(1.0)
    # Noise queries find themselves (the query is its reference plus jitter) but never their
    # class's other items: MAP@R near chance, far from the seen figures.
    assert report["unseen"]["map_at_r"] < 0.3


def test_held_out_run_trains_as_many_steps_as_the_full_model(
    fashion_lake, tmp_path, make_settings
) -> None:
    """The held-out model gets the full model's optimizer steps (not epochs over its fewer
    rows, which would train it ~30 % less), and a caller's explicit steps are kept."""
    _, lake, table = fashion_lake
    options = {
        "lake.root": str(lake.root),
        "train.validation_fraction": 0.0,
        "train.steps_per_epoch": None,
    }
    full = make_settings(tmp_path / "full", **options)
    held_out = make_settings(tmp_path / "held", **options, **{"train.holdout_classes": HOLDOUT})
    full_steps = training.steps_per_epoch(full, len(training.training_rows(lake, table, full)))
    held_out_steps = training.steps_per_epoch(
        held_out, len(training.training_rows(lake, table, held_out))
    )
    assert held_out_steps < full_steps  # what the protocol corrects
    matched = with_full_model_steps(held_out, lake, table)
    assert matched.train.steps_per_epoch == full_steps
    assert matched.train.holdout_classes == HOLDOUT
    explicit = make_settings(
        tmp_path / "explicit",
        **{**options, "train.holdout_classes": HOLDOUT, "train.steps_per_epoch": 3},
    )
    assert with_full_model_steps(explicit, lake, table).train.steps_per_epoch == 3
