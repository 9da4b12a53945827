"""Data-parallel training with Horovod on Spark: `train_distributed` is `model.train.train` with
the work split over `distributed.num_proc` ranks, each streaming its own shard of the table.

The driver plans the shards (small columns only), opens the MLflow run (params, lineage, the same
tags as `train()`), and launches `_train_worker` on the Spark cluster with `horovod.spark.run`.
Each rank: `hvd.init()`, the optimizer wrapped in `hvd.DistributedOptimizer` *and compiled into
the model*, initial variables broadcast from rank 0, metrics averaged; rank 0 alone validates,
writes checkpoints, logs to MLflow and logs the final model, so `index` and `evaluate` work on
the run exactly as on a single-process one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import queue
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import tensorflow as tf

from simrec.config import Settings
from simrec.distributed.batching import ClassBalancedBatches, batched_dataset
from simrec.distributed.job import DistributedJob, WorkerReport
from simrec.distributed.shards import (
    INDEX_COLUMNS,
    RowFilter,
    RowGroup,
    Shard,
    ShardPlan,
    first_rows_max_id,
    make_shards,
    plan_shards,
    snapshot_row_groups,
    stream_columns,
    training_stream,
)
from simrec.images import decode_batch
from simrec.lake.tables import Lakehouse, TableVersion
from simrec.model.data import LabelledImages
from simrec.model.progress import keras_verbosity
from simrec.model.train import (
    MlflowEpochLogger,
    TrainResult,
    ValidationRecall,
    compile_model,
    log_model,
    steps_per_epoch,
)
from simrec.tracking import resolve_tracking_uri, setup_mlflow, tracked_step

log = logging.getLogger(__name__)


@dataclass
class DistributedTrainResult(TrainResult):
    num_proc: int = 1
    images_per_second: float = 0.0  # all ranks together, steady state (epochs after the first)
    launch_seconds: float = 0.0  # horovod.spark.run, start to end, as the driver saw it
    workers: list[WorkerReport] = field(default_factory=list)


@dataclass(frozen=True)
class TrainingPlan:
    row_groups: list[RowGroup]
    shards: list[ShardPlan]
    row_filter: RowFilter
    training_rows: int
    validation_rows: int
    classes_per_batch: int
    examples_per_class: int
    steps_per_epoch: int
    learning_rate: float

    @property
    def batch_per_worker(self) -> int:
        return self.classes_per_batch * self.examples_per_class


def plan_training(
    settings: Settings, lake: Lakehouse, table: TableVersion, num_proc: int
) -> TrainingPlan:
    """Shards, batch shape, steps and learning rate, from the table's small columns.

    An epoch is as many images as a single-process epoch, split over the ranks: each rank takes
    ceil(single-process images per epoch / (num_proc × batch per worker)) steps, the same number
    on every rank (a rank that stopped early would leave the others waiting in an allreduce).
    """
    if num_proc < 1:
        raise ValueError("distributed.num_proc must be at least 1")
    train, dist = settings.train, settings.distributed
    row_groups = snapshot_row_groups(lake, table)
    row_filter = RowFilter(
        split="train",
        validation_fraction=train.validation_fraction,
        holdout_classes=tuple(train.holdout_classes),
        max_id=first_rows_max_id(row_groups, "train", train.max_rows) if train.max_rows else None,
    )
    shards = plan_shards(make_shards(row_groups, num_proc, dist.reader), row_filter)
    training_rows = sum(plan.training_rows for plan in shards)
    validation_rows = 0
    everything = make_shards(row_groups, 1)[0]
    for columns in stream_columns(everything, INDEX_COLUMNS, 65536):
        validation_rows += int(
            row_filter.validation(columns["id"], columns["split"], columns["label"]).sum()
        )

    shared_classes = min(len(plan.classes) for plan in shards)
    if dist.batch_per_worker is None:
        classes_per_batch = min(train.classes_per_batch, shared_classes)
    else:
        if dist.batch_per_worker % train.examples_per_class:
            raise ValueError(
                f"distributed.batch_per_worker ({dist.batch_per_worker}) must be a multiple of "
                f"train.examples_per_class ({train.examples_per_class})"
            )
        classes_per_batch = dist.batch_per_worker // train.examples_per_class
    if classes_per_batch < 2:
        raise ValueError("MultiSimilarityLoss needs batches of at least 2 classes")
    if classes_per_batch > shared_classes:
        raise ValueError(
            f"each rank needs batches of {classes_per_batch} classes, but a shard holds only "
            f"{shared_classes} classes; use fewer processes or a smaller batch"
        )
    batch = classes_per_batch * train.examples_per_class
    smallest = min(plan.training_rows for plan in shards)
    if smallest < batch:
        raise ValueError(
            f"a shard holds {smallest} training rows, fewer than one batch ({batch}); "
            "use fewer processes or more rows"
        )
    single_process_images = steps_per_epoch(settings, training_rows) * (
        min(train.classes_per_batch, len({c for plan in shards for c in plan.classes}))
        * train.examples_per_class
    )
    steps = max(1, math.ceil(single_process_images / (num_proc * batch)))
    rate = train.learning_rate * (num_proc if dist.scale_learning_rate else 1)
    return TrainingPlan(
        row_groups=row_groups,
        shards=shards,
        row_filter=row_filter,
        training_rows=training_rows,
        validation_rows=validation_rows,
        classes_per_batch=classes_per_batch,
        examples_per_class=train.examples_per_class,
        steps_per_epoch=steps,
        learning_rate=rate,
    )


def train_distributed(
    settings: Settings,
    lake: Lakehouse,
    table: TableVersion,
    run_name: str = "train-distributed",
    spark=None,
    distributed_optimizer: bool = True,
) -> DistributedTrainResult:
    """Train on `table` with `settings.distributed.num_proc` Horovod ranks on the Spark cluster.

    `distributed_optimizer=False` skips the `hvd.DistributedOptimizer` wrapper, so each rank
    steps on its own gradients: only for showing (in tests) what averaging prevents. Such a run
    is tagged `simrec.step=diagnostic` and logs no model, so nothing downstream picks it up.
    """
    import horovod.spark

    from simrec.spark import get_spark

    _require_gloo()
    num_proc = settings.distributed.num_proc
    spark = spark or get_spark(settings.spark)
    slots = spark.sparkContext.defaultParallelism
    if num_proc > slots:
        raise ValueError(
            f"distributed.num_proc={num_proc} needs {num_proc} concurrent Spark tasks, "
            f"the cluster has {slots} slots (spark.master={spark.sparkContext.master})"
        )
    settings = _absolute_paths(settings)
    plan = plan_training(settings, lake, table, num_proc)
    log.info(
        f"distributed training on {plan.training_rows} images ({plan.validation_rows} for "
        f"validation), {num_proc} processes × {plan.steps_per_epoch} steps × "
        f"{plan.batch_per_worker} images, {settings.train.epochs} epochs; shards of "
        f"{[p.training_rows for p in plan.shards]} rows "
        f"({'row groups' if plan.shards[0].shard.by_row_group else 'rows by id hash'}, "
        f"{settings.distributed.reader})"
    )

    setup_mlflow(settings.mlflow)
    with tracked_step(
        "train" if distributed_optimizer else "diagnostic",
        settings,
        {"training": table},
        run_name=run_name,
        tags={
            "simrec.training.mode": "distributed",
            "simrec.distributed.num_proc": str(num_proc),
        },
    ) as run:
        mlflow.log_params(
            {
                "train_rows": plan.training_rows,
                "validation_rows": plan.validation_rows,
                "distributed_world_size": num_proc,
                "distributed_learning_rate": plan.learning_rate,
                "distributed_batch_per_worker": plan.batch_per_worker,
                "distributed_global_batch": plan.batch_per_worker * num_proc,
                "distributed_steps_per_epoch": plan.steps_per_epoch,
                "distributed_sharding": "row_groups"
                if plan.shards[0].shard.by_row_group
                else "id_hash",
                "distributed_optimizer": distributed_optimizer,
            }
        )
        job = DistributedJob(
            settings=settings,
            table=table,
            row_groups=tuple(plan.row_groups),
            shards=tuple(p.shard for p in plan.shards),
            shard_rows=tuple(p.training_rows for p in plan.shards),
            row_filter=plan.row_filter,
            run_id=run.info.run_id,
            classes_per_batch=plan.classes_per_batch,
            examples_per_class=plan.examples_per_class,
            steps_per_epoch=plan.steps_per_epoch,
            learning_rate=plan.learning_rate,
            distributed_optimizer=distributed_optimizer,
        )
        started = time.perf_counter()
        reports: list[WorkerReport] = horovod.spark.run(
            _train_worker,
            args=(job,),
            num_proc=num_proc,
            env=_worker_env(),
            nics=_nics(settings),
            start_timeout=settings.distributed.start_timeout_s,
            use_gloo=True,
            verbose=keras_verbosity(),
        )
        launch_seconds = time.perf_counter() - started
        reports = sorted(reports, key=lambda report: report.rank)
        chief = reports[0]
        images_per_second = _throughput(reports)
        mlflow.log_metrics(
            {"images_per_second": images_per_second, "horovod_run_seconds": launch_seconds}
        )
    return DistributedTrainResult(
        run_id=run.info.run_id,
        model_uri=chief.model_uri or "",
        table=table,
        best_epoch=chief.best_epoch,
        val_recall_at_1=chief.best_val_recall_at_1,
        history=chief.history,
        num_proc=num_proc,
        images_per_second=images_per_second,
        launch_seconds=launch_seconds,
        workers=reports,
    )


class _EpochClock(tf.keras.callbacks.Callback):
    """Seconds of each epoch's training steps (first in the list: validation is not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._started)


class _AverageBatchNormStatistics(tf.keras.callbacks.Callback):
    """BatchNorm moving statistics are updated from each rank's own batches, not by the
    optimizer; averaging them every epoch keeps the ranks' models identical."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        import horovod.tensorflow as hvd

        for layer in self.model.layers:
            if isinstance(layer, tf.keras.layers.BatchNormalization):
                for variable in (layer.moving_mean, layer.moving_variance):
                    variable.assign(hvd.allreduce(variable, op=hvd.Average))


def _train_worker(job: DistributedJob) -> WorkerReport:
    """One Horovod rank (runs inside a Spark task's process)."""
    import horovod.tensorflow as hvd_ops
    import horovod.tensorflow.keras as hvd

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    # Ranks on one machine share its cores; without this each would start one thread per core.
    threads = max(1, (os.cpu_count() or 1) // hvd.local_size())
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    settings = job.settings
    tf.keras.utils.set_random_seed(settings.train.seed)

    epochs = settings.train.epochs
    model = compile_model(
        settings.with_overrides({"train.learning_rate": job.learning_rate}),
        total_steps=epochs * job.steps_per_epoch,
        optimizer_wrapper=hvd.DistributedOptimizer if job.distributed_optimizer else None,
    )
    # Same seed on every rank already; the broadcast makes rank 0's start authoritative anyway.
    # Optimizer slots are created (as zeros, identically) on the first step, so need none.
    hvd_ops.broadcast_variables(model.variables, root_rank=0)
    initial_digest = weights_digest(model)
    tf.keras.utils.set_random_seed(settings.train.seed + rank)  # own dropout masks per rank

    shard = job.shards[rank]
    batcher = ClassBalancedBatches(
        job.classes_per_batch,
        job.examples_per_class,
        # At most half the shard: a buffer as large as the shard would hold rows of one pass
        # while the next pass adds them again.
        min(settings.distributed.shuffle_buffer_rows, job.shard_rows[rank] // 2),
        seed=settings.train.seed + 1000 * rank,
    )
    dataset = batched_dataset(
        lambda: batcher(
            training_stream(
                shard,
                job.row_filter,
                settings.distributed.read_batch_rows,
                seed=settings.train.seed + 1000 * rank,
            )
        ),
        job.batch_per_worker,
        settings.model.image_size,
        settings.model.channels,
    )

    clock = _EpochClock()
    callbacks: list[tf.keras.callbacks.Callback] = [
        clock,
        hvd.callbacks.MetricAverageCallback(),
        _AverageBatchNormStatistics(),
    ]
    validation = None
    if rank == 0:
        validation_rows = _validation_rows(job)
        validation = ValidationRecall(
            validation_rows, settings.train.validation_queries, settings.model.mirror_average
        )
        if len(validation_rows) > 1:
            callbacks.append(validation)
        callbacks.append(MlflowEpochLogger())
        if settings.distributed.checkpoint_dir is not None:
            folder = Path(settings.distributed.checkpoint_dir)
            folder.mkdir(parents=True, exist_ok=True)
            callbacks.append(
                tf.keras.callbacks.ModelCheckpoint(
                    str(folder / "epoch-{epoch:02d}.weights.h5"), save_weights_only=True
                )
            )
    # Rank 0 logs into the run the driver opened; failing here marks it FAILED.
    run = nullcontext()
    if rank == 0:
        setup_mlflow(settings.mlflow)
        run = mlflow.start_run(run_id=job.run_id)
    with run:
        history = model.fit(
            dataset,
            epochs=epochs,
            steps_per_epoch=job.steps_per_epoch,
            callbacks=callbacks,
            verbose=2 if rank == 0 else 0,
        )
        report = WorkerReport(
            rank=rank,
            size=size,
            initial_weights_digest=initial_digest,
            final_weights_digest=weights_digest(model),
            history={k: [float(v) for v in values] for k, values in history.history.items()},
            epoch_seconds=clock.seconds,
            images_per_epoch=job.steps_per_epoch * job.batch_per_worker,
        )
        if validation is not None:  # rank 0
            if validation.best_weights is not None:
                model.set_weights(validation.best_weights)
            mlflow.log_metrics(
                {
                    "best_epoch": validation.best_epoch + 1,
                    "best_val_recall_at_1": validation.best_recall,
                }
            )
            report.best_epoch = validation.best_epoch + 1
            report.best_val_recall_at_1 = validation.best_recall
            if job.distributed_optimizer:
                example = validation.validation.pixels[:4]
                if len(example) == 0:
                    example = _first_training_pixels(job, 4)
                report.model_uri = log_model(model, example, settings)
    return report


def weights_digest(model: tf.keras.Model) -> str:
    """sha256 of every weight, bit for bit: equal digests mean identical models."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()


def _validation_rows(job: DistributedJob) -> LabelledImages:
    """The validation rows, streamed from the whole snapshot (rank 0 only; small)."""
    everything = Shard(0, 1, job.row_groups, by_row_group=True)
    ids, labels, images = [], [], []
    for columns in stream_columns(everything, [*INDEX_COLUMNS, "image"], 4096):
        keep = job.row_filter.validation(columns["id"], columns["split"], columns["label"])
        ids.append(columns["id"][keep])
        labels.append(columns["label"][keep])
        images.extend(columns["image"][keep])
    size, channels = job.settings.model.image_size, job.settings.model.channels
    order = np.argsort(np.concatenate(ids)) if ids else np.zeros(0, dtype=np.int64)
    return LabelledImages(
        ids=np.concatenate(ids)[order] if ids else np.zeros(0, dtype=object),
        labels=np.concatenate(labels)[order] if labels else np.zeros(0, dtype=np.int64),
        pixels=decode_batch([images[i] for i in order], size, channels),
    )


def _first_training_pixels(job: DistributedJob, count: int) -> np.ndarray:
    images, _ = next(training_stream(job.shards[0], job.row_filter, count, job.settings.train.seed))
    return decode_batch(images[:count], job.settings.model.image_size, job.settings.model.channels)


def _throughput(reports: list[WorkerReport]) -> float:
    """Images per second of all ranks together, leaving out the first epoch (tracing) if any
    epoch follows it."""
    total = 0.0
    for report in reports:
        seconds = report.epoch_seconds[1:] or report.epoch_seconds
        if seconds:
            total += report.images_per_epoch / (sum(seconds) / len(seconds))
    return total


def _absolute_paths(settings: Settings) -> Settings:
    """Ranks may start in another working directory: resolve everything relative here.

    (`mlflow.artifact_root` only matters when the experiment is created, which the driver
    does before any rank starts.)
    """
    overrides: dict[str, object] = {
        "lake.root": str(Path(settings.lake.root).resolve()),
        "mlflow.tracking_uri": resolve_tracking_uri(settings.mlflow.tracking_uri),
    }
    if settings.mlflow.registry_uri:
        overrides["mlflow.registry_uri"] = resolve_tracking_uri(settings.mlflow.registry_uri)
    if settings.distributed.checkpoint_dir is not None:
        overrides["distributed.checkpoint_dir"] = str(
            Path(settings.distributed.checkpoint_dir).resolve()
        )
    return settings.with_overrides(overrides)


def _require_gloo() -> None:
    """Ask Horovod now whether Gloo is built, so its answer is cached before the launch.

    Horovod asks by forking this process; inside `horovod.spark.run` that fork happens while
    the Spark job thread is running, and once (in the benchmark, after in-process training)
    the forked check died without an answer (`queue.Empty`). Here it forks before that thread
    exists, and tries again if the check dies; only a finished answer is cached.
    """
    from horovod.common.util import gloo_built

    for _ in range(3):
        try:
            built = gloo_built()
        except queue.Empty:
            continue
        if not built:
            raise RuntimeError(
                "Horovod was built without Gloo: reinstall it with scripts/install.sh "
                "(HOROVOD_WITH_GLOO=1, HOROVOD_WITH_TENSORFLOW=1)"
            )
        return
    raise RuntimeError("Horovod's check for Gloo (a fork of this process) died three times")


def _worker_env() -> dict[str, str]:
    """The ranks' environment additions: simrec importable (also when it is not installed but
    on the driver's PYTHONPATH), TensorFlow quiet."""
    import simrec

    source_root = str(Path(simrec.__file__).resolve().parents[1])
    paths = [source_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "PYTHONUNBUFFERED": "1",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


def _nics(settings: Settings) -> set[str] | None:
    """The network interfaces Gloo may use: configured, else the one holding `spark.local_ip`
    (loopback for local runs), else Horovod's choice."""
    if settings.distributed.nics:
        return set(settings.distributed.nics)
    if not settings.spark.local_ip:
        return None
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(address.address == settings.spark.local_ip for address in addresses):
            return {name}
    return None
