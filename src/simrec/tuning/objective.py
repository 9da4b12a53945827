"""One hyperopt trial: train with the sampled knobs, score Recall@1 on the validation split.

Runs wherever hyperopt puts it: in the driver (`Trials`) or in a Spark executor's Python worker
(`SparkTrials`), which shares nothing with the driver. So it rebuilds everything from a
picklable `TrialContext` and logs its own nested MLflow run under the search's parent run
(hyperopt logs nothing to MLflow itself). Every failure is the trial's, reported as
`STATUS_FAIL` with the reason, never the search's.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
from hyperopt import STATUS_FAIL, STATUS_OK

from simrec.config import Settings
from simrec.lake.tables import Lakehouse, TableVersion
from simrec.model.data import LabelledImages

log = logging.getLogger(__name__)

TRIAL_STEP = "tune-trial"
FAILURE_TAG = "simrec.failure"
FAILURE_ARTIFACT = "failure.txt"
MAX_TAG_CHARS = 5000
MAX_REASON_CHARS = 500
_NAMED_ERROR = re.compile(r"^[A-Za-z_.]*(Error|Exception): ")


@dataclass(frozen=True)
class TrialContext:
    """What a trial needs, as plain values: shipped to whichever process runs the trial."""

    settings: dict[str, Any]  # Settings.model_dump(mode="json")
    lake_root: str
    table: TableVersion
    tracking_uri: str  # resolved: an executor's working directory may differ
    experiment_id: str
    parent_run_id: str


def make_objective(context: TrialContext) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """fmin's objective: a partial of a module-level function, so it pickles by reference."""
    return functools.partial(run_trial, context)


def plain_values(knobs: dict[str, Any]) -> dict[str, Any]:
    """hyperopt hands out numpy scalars and tuples; settings, MLflow and YAML want plain values."""

    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        return value

    return {key: plain(value) for key, value in sorted(knobs.items())}


def run_trial(context: TrialContext, knobs: dict[str, Any]) -> dict[str, Any]:
    """Train with `knobs` applied, as one nested MLflow run; hyperopt's result dict back."""
    started = time.perf_counter()
    knobs = plain_values(knobs)
    try:
        mlflow.set_tracking_uri(context.tracking_uri)
        run = mlflow.start_run(
            experiment_id=context.experiment_id,
            nested=True,
            parent_run_id=context.parent_run_id,
            # The pid tells which process ran the trial (a Spark worker, or the driver).
            tags={"simrec.step": TRIAL_STEP, "simrec.trial.pid": str(os.getpid())},
        )
    except Exception as error:  # the tracking store is unreachable: still only this trial
        return _failure(f"could not start the trial's MLflow run: {describe_error(error)}", knobs)
    status = "KILLED"  # unless the trial gets to report (an interrupt ends it otherwise)
    try:
        try:
            mlflow.log_params(knobs)
            result = _fit_and_score(context, knobs)
        except Exception as error:
            result = _failure(describe_error(error), knobs)
            _quietly(mlflow.log_text, traceback.format_exc(), FAILURE_ARTIFACT)
        result["run_id"] = run.info.run_id
        _quietly(mlflow.log_metric, "trial_seconds", time.perf_counter() - started)
        if result["status"] == STATUS_OK:
            status = "FINISHED"
        else:
            status = "FAILED"
            _quietly(mlflow.set_tag, FAILURE_TAG, result["failure"][:MAX_TAG_CHARS])
        return result
    finally:
        # Always pop the trial's run: with `Trials` the next trial nests under the same parent.
        _quietly(mlflow.end_run, status=status)


def _quietly(log_call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Bookkeeping that must not turn a finished trial into a crashed search."""
    try:
        log_call(*args, **kwargs)
    except Exception:
        log.warning("MLflow bookkeeping failed for a trial", exc_info=True)


def _fit_and_score(context: TrialContext, knobs: dict[str, Any]) -> dict[str, Any]:
    # TensorFlow is imported by the trial, not the module: a SparkTrials driver never needs it.
    import tensorflow as tf

    from simrec.model.train import fit_and_validate

    settings = Settings.model_validate(context.settings).with_overrides(knobs)
    _limit_threads(settings.tuning.threads_per_trial)
    train_rows, validation_rows = _rows(context, settings)
    mlflow.log_params({"train_rows": len(train_rows), "validation_rows": len(validation_rows)})
    if len(validation_rows) < 2:
        return _failure("fewer than two validation rows: nothing to score", knobs)
    fitted = fit_and_validate(
        settings,
        train_rows,
        validation_rows,
        extra_callbacks=[tf.keras.callbacks.TerminateOnNaN()],
        verbose=0,
    )
    losses = fitted.history.get("loss", [])
    diverged = [(epoch, loss) for epoch, loss in enumerate(losses, 1) if not math.isfinite(loss)]
    if diverged:
        epoch, loss = diverged[0]
        return _failure(f"training loss became {loss} in epoch {epoch}", knobs)
    recall = fitted.val_recall_at_1
    if not math.isfinite(recall) or recall < 0:
        return _failure("no epoch produced a model that could be scored on validation", knobs)
    mlflow.log_metrics({"best_val_recall_at_1": recall, "best_epoch": fitted.best_epoch})
    return {
        "status": STATUS_OK,
        "loss": -recall,
        "val_recall_at_1": recall,
        "best_epoch": fitted.best_epoch,
        "params": knobs,
    }


def _failure(reason: str, knobs: dict[str, Any]) -> dict[str, Any]:
    return {"status": STATUS_FAIL, "failure": reason, "params": knobs}


def describe_error(error: BaseException) -> str:
    """One line: the exception and its message, or for TensorFlow's multi-line errors the line
    naming the underlying error and the detail after it (the traceback goes to failure.txt)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [i for i, line in enumerate(lines) if _NAMED_ERROR.match(line)]
    if named:
        summary = " ".join(lines[named[-1] : named[-1] + 2])
    else:
        summary = " ".join([type(error).__name__ + ":", *lines[:2]]).rstrip(":")
    return summary[:MAX_REASON_CHARS]


def _limit_threads(threads: int | None) -> None:
    """Cap TensorFlow's thread pools, so parallel trials do not fight over the same cores."""
    if threads is None:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        # TensorFlow already ran in this process (an earlier trial): its pools are fixed.
        log.warning("TensorFlow already started in this process; its thread pools stay as they are")
    mlflow.log_param(
        "tensorflow_intra_op_threads", tf.config.threading.get_intra_op_parallelism_threads()
    )


# Decoded rows of the last data set this process used: with `Trials` (and on executors that
# run several trials) later trials skip reading and decoding the table again.
_ROWS_CACHE: dict[tuple[Any, ...], tuple[LabelledImages, LabelledImages]] = {}


def _rows(context: TrialContext, settings: Settings) -> tuple[LabelledImages, LabelledImages]:
    """(train, validation) rows; only the settings that choose the rows key the cache."""
    from simrec.model.train import split_validation, training_rows

    key = (
        context.lake_root,
        context.table,
        settings.model.image_size,
        settings.model.channels,
        settings.train.max_rows,
        tuple(settings.train.holdout_classes),
        settings.tuning.validation_fraction,
    )
    if key not in _ROWS_CACHE:
        _ROWS_CACHE.clear()
        rows = training_rows(Lakehouse(context.lake_root), context.table, settings)
        _ROWS_CACHE[key] = split_validation(rows, settings.tuning.validation_fraction)
    return _ROWS_CACHE[key]
