"""Keras output while fitting: one line per epoch off a terminal, a progress bar on one; the
library's own progress goes through logging."""

from __future__ import annotations

import io
import logging

import mlflow
import numpy as np

from simrec.model.data import LabelledImages
from simrec.model.progress import keras_verbosity
from simrec.model.train import fit_and_validate
from simrec.tracking import setup_mlflow


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal() -> None:
    assert keras_verbosity(_Terminal()) == 1
    assert keras_verbosity(io.StringIO()) == 2


def test_fitting_off_a_terminal_prints_no_per_step_bars(settings, capfd, caplog) -> None:
    rng = np.random.default_rng(0)
    rows = LabelledImages(
        ids=np.asarray([f"r{i}" for i in range(200)], dtype=object),
        labels=np.repeat(np.arange(10), 20),
        pixels=rng.integers(0, 255, size=(200, 28, 28, 1), dtype=np.uint8),
    )
    tiny = settings.with_overrides({"train.epochs": 2, "train.steps_per_epoch": 5})
    setup_mlflow(tiny.mlflow)
    with caplog.at_level(logging.INFO, logger="simrec"), mlflow.start_run():
        fit_and_validate(
            tiny, rows.subset(np.arange(200) < 150), rows.subset(np.arange(200) >= 150)
        )
    printed = capfd.readouterr().out
    assert "ETA" not in printed and "\r" not in printed and "\x08" not in printed
    assert printed.count("Epoch ") == 2  # Keras: one summary per epoch
    epochs = [r.getMessage() for r in caplog.records if "validation Recall@1" in r.getMessage()]
    assert len(epochs) == 2 and epochs[0].startswith("epoch 1:")
