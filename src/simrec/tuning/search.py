"""The search driver: hyperopt over the conf/ space, one parent MLflow run, a nested run per
trial, and the best knobs written where `simrec train --params` reads them.

Trials run on Spark (`SparkTrials`, one Spark job per trial, `parallelism` at a time, on the
configured session: local or any cluster master) or sequentially in this process (`Trials`).
"""

from __future__ import annotations

import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import yaml
from hyperopt import STATUS_OK, Trials, fmin, rand, tpe
from hyperopt.base import JOB_STATE_CANCEL, JOB_STATE_DONE, JOB_STATE_ERROR
from hyperopt.exceptions import AllTrialsFailed
from hyperopt.fmin import generate_trial

from simrec.config import Settings
from simrec.lake.tables import Lakehouse, TableVersion
from simrec.tracking import resolve_tracking_uri, setup_mlflow, tracked_step
from simrec.tuning.objective import FAILURE_TAG, MAX_TAG_CHARS, TrialContext, make_objective
from simrec.tuning.space import point_to_assignment, search_space

TRIALS_ARTIFACT = "trials.json"
ALGORITHMS = {"tpe": tpe.suggest, "random": rand.suggest}
LOST_TRIAL = "the trial's process ended without reporting a result (see the Spark logs)"


class NoSuccessfulTrialError(RuntimeError):
    """Every trial of the search failed: there is no best configuration to report."""


@dataclass
class TrialRecord:
    tid: int
    status: str  # "ok", "fail", or "lost"/"cancelled" for trials that never reported back
    val_recall_at_1: float | None
    params: dict[str, Any]
    run_id: str | None = None
    failure: str | None = None


@dataclass
class TuneResult:
    run_id: str
    backend: str
    best_params: dict[str, Any]
    best_val_recall_at_1: float
    best_trial_run_id: str
    best_params_path: Path
    search_seconds: float
    trials: list[TrialRecord] = field(default_factory=list)

    @property
    def failed(self) -> list[TrialRecord]:
        return [trial for trial in self.trials if trial.status != "ok"]


def tune(
    settings: Settings,
    lake: Lakehouse,
    table: TableVersion,
    spark: Any | None = None,
    best_params_path: Path | None = None,
    run_name: str = "tune",
) -> TuneResult:
    """Search `settings.tuning.space` on the train split of `table`, scored on validation.

    `spark`: the session for SparkTrials (default: `simrec.spark.get_spark`). Raises
    `NoSuccessfulTrialError` (after recording everything) when every trial failed.
    """
    tuning = settings.tuning
    space = search_space(settings)
    seeded = [point_to_assignment(settings, point) for point in tuning.points_to_evaluate]
    if len(seeded) > tuning.max_evals:
        raise ValueError("tuning.points_to_evaluate holds more points than tuning.max_evals")
    best_params_path = Path(best_params_path or tuning.best_params_file)

    experiment_id = setup_mlflow(settings.mlflow)
    with tracked_step(
        "tune",
        settings,
        {"tuning": table},
        run_name=run_name,
        tags={"simrec.tuning.backend": tuning.trials},
    ) as parent:
        context = TrialContext(
            settings=settings.model_dump(mode="json"),
            lake_root=str(lake.root),
            table=table,
            tracking_uri=resolve_tracking_uri(settings.mlflow.tracking_uri),
            experiment_id=experiment_id,
            parent_run_id=parent.info.run_id,
        )
        trials = _make_trials(settings, spark)
        if seeded:
            trials.insert_trial_docs([generate_trial(tid, pt) for tid, pt in enumerate(seeded)])
            trials.refresh()

        started = time.perf_counter()
        # AllTrialsFailed is not the end: it is reported below, with every trial's reason.
        with suppress(AllTrialsFailed):
            fmin(
                make_objective(context),
                space,
                algo=ALGORITHMS[tuning.algo],
                max_evals=tuning.max_evals,
                trials=trials,
                timeout=tuning.timeout_s,
                rstate=np.random.default_rng(tuning.seed),
                show_progressbar=False,
                return_argmin=False,
            )
        search_seconds = time.perf_counter() - started

        records = _records(trials)
        _close_lost_runs(experiment_id, parent.info.run_id)
        successful = [record for record in records if record.status == STATUS_OK]
        mlflow.log_metrics(
            {
                "search_seconds": search_seconds,
                "trials_ok": len(successful),
                "trials_failed": len(records) - len(successful),
            }
        )
        mlflow.log_dict([asdict(record) for record in records], TRIALS_ARTIFACT)
        if not successful:
            reasons = "; ".join(f"trial {r.tid}: {r.failure}" for r in records)
            raise NoSuccessfulTrialError(f"all {len(records)} trials failed: {reasons}")

        best = max(successful, key=lambda record: record.val_recall_at_1)
        mlflow.log_metric("best_val_recall_at_1", best.val_recall_at_1)
        mlflow.log_params({f"best.{key}": value for key, value in best.params.items()})
        mlflow.set_tag("simrec.tuning.best_trial_run_id", best.run_id)
        write_best_params(best_params_path, best, parent.info.run_id)
        mlflow.log_artifact(str(best_params_path))
        return TuneResult(
            run_id=parent.info.run_id,
            backend=tuning.trials,
            best_params=best.params,
            best_val_recall_at_1=best.val_recall_at_1,
            best_trial_run_id=best.run_id,
            best_params_path=best_params_path,
            search_seconds=search_seconds,
            trials=records,
        )


def _make_trials(settings: Settings, spark: Any | None) -> Trials:
    if settings.tuning.trials == "local":
        return Trials()
    from hyperopt import SparkTrials

    from simrec.spark import get_spark

    return SparkTrials(
        parallelism=settings.tuning.parallelism,
        spark_session=spark or get_spark(settings.spark),
    )


def _records(trials: Trials) -> list[TrialRecord]:
    records = []
    # `_dynamic_trials`, not `trials.trials`: the public list drops trials in the error state,
    # which is where SparkTrials puts a trial whose Python worker died.
    for trial in sorted(trials._dynamic_trials, key=lambda trial: trial["tid"]):
        result = trial.get("result") or {}
        if trial["state"] == JOB_STATE_DONE:
            status, failure = result.get("status"), result.get("failure")
        elif trial["state"] == JOB_STATE_ERROR:
            status, failure = "lost", f"{LOST_TRIAL}: {trial['misc'].get('error')}"
        elif trial["state"] == JOB_STATE_CANCEL:
            status, failure = "cancelled", "cancelled (tuning.timeout_s)"
        else:
            continue
        records.append(
            TrialRecord(
                tid=trial["tid"],
                status=status,
                val_recall_at_1=result.get("val_recall_at_1"),
                params=result.get("params") or {},
                run_id=result.get("run_id"),
                failure=failure,
            )
        )
    return records


def _close_lost_runs(experiment_id: str, parent_run_id: str) -> None:
    """Trial runs still RUNNING after the search belong to processes that died: mark them."""
    client = mlflow.MlflowClient()
    lost = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"
        ),
    )
    for run in lost:
        client.set_tag(run.info.run_id, FAILURE_TAG, LOST_TRIAL[:MAX_TAG_CHARS])
        client.set_terminated(run.info.run_id, status="FAILED")


def write_best_params(path: Path, best: TrialRecord, parent_run_id: str) -> Path:
    """best.yaml: the best trial's knobs as dotted overrides, for `simrec train --params`."""
    header = (
        f"# simrec tune: best trial by validation Recall@1 ({best.val_recall_at_1:.4f})\n"
        f"# search run {parent_run_id}, trial run {best.run_id}\n"
        f"# apply with: simrec train --params {path.name}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(best.params, sort_keys=True, default_flow_style=None))
    return path
