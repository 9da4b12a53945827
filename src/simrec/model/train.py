"""Train the similarity model from a Delta table at a pinned version, tracked in MLflow."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import mlflow
import numpy as np
import tensorflow as tf
from tensorflow_similarity.losses import MultiSimilarityLoss

from simrec.config import Settings
from simrec.evaluation.retrieval import retrieval_report
from simrec.lake.tables import Lakehouse, TableVersion
from simrec.model.data import LabelledImages, read_split, validation_mask
from simrec.model.embedding import build_similarity_model, embed, embedding_model
from simrec.model.feeding import class_balanced_batches
from simrec.model.mirror import mirrored
from simrec.model.precision import dtype_policy
from simrec.model.progress import keras_verbosity
from simrec.model.trainer import SimilarityTrainer
from simrec.tracking import pinned_requirements, setup_mlflow, tracked_step

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
# What loading the logged Keras model imports: its custom layers come from
# tensorflow-similarity (MetricEmbedding) and simrec (the mirror-averaging layers).
MODEL_DISTRIBUTIONS = ("mlflow", "tensorflow", "tensorflow-similarity", "numpy", "simrec")


@dataclass
class TrainResult:
    run_id: str
    model_uri: str
    table: TableVersion
    best_epoch: int
    val_recall_at_1: float
    history: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class FitOutcome:
    """A fitted model (best validation epoch's weights) and how it got there."""

    model: tf.keras.Model
    best_epoch: int  # 1-based; 0 when there was no validation to choose by
    val_recall_at_1: float  # -1.0 when there were no validation rows
    history: dict[str, list[float]] = field(default_factory=dict)


def training_rows(lake: Lakehouse, table: TableVersion, settings: Settings) -> LabelledImages:
    """The train split, minus the unseen-class protocol's held-out labels."""
    rows = read_split(
        lake,
        table,
        "train",
        settings.model.image_size,
        settings.model.channels,
        max_rows=settings.train.max_rows,
    )
    if settings.train.holdout_classes:
        rows = rows.subset(~np.isin(rows.labels, settings.train.holdout_classes))
    return rows


def split_validation(
    rows: LabelledImages, fraction: float
) -> tuple[LabelledImages, LabelledImages]:
    """(train, validation): the validation rows are chosen by a stable hash of the row id."""
    holdout = validation_mask(rows.ids, fraction)
    return rows.subset(~holdout), rows.subset(holdout)


class ValidationRecall(tf.keras.callbacks.Callback):
    """Leave-one-out Recall@1 on the validation rows after each epoch; keeps the best weights."""

    def __init__(self, validation: LabelledImages, max_queries: int, mirror_average: bool):
        super().__init__()
        self.validation = validation
        self.max_queries = max_queries
        self.mirror_average = mirror_average  # score the epoch as the saved model will embed
        self._scorer: tf.keras.Model | None = None  # built once: shares the model's layers
        self.best_recall = -1.0
        self.best_epoch = -1
        self.best_weights: list[np.ndarray] | None = None

    def _scoring_model(self) -> tf.keras.Model:
        if not self.mirror_average:
            return self.model
        if self._scorer is None:  # one wrapper (and one traced predict) for every epoch
            self._scorer = mirrored(self.model)
        return self._scorer

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        embeddings = embed(self._scoring_model(), self.validation.pixels)
        queries = min(self.max_queries, len(embeddings))
        if np.isfinite(embeddings).all():
            recall = retrieval_report(
                embeddings[:queries],
                self.validation.labels[:queries],
                embeddings,
                self.validation.labels,
                recall_at=[1],
                with_map_at_r=False,
                exclude_self=True,
            )["recall_at_1"]
        else:
            # A diverged model: NaN scores rank arbitrarily (even "perfectly"); never pick it.
            recall = float("nan")
        if logs is not None:
            logs["val_recall_at_1"] = recall
        mlflow.log_metric("val_recall_at_1", recall, step=epoch)
        if recall > self.best_recall:
            self.best_recall, self.best_epoch = recall, epoch
            self.best_weights = self.model.get_weights()
        log.info(
            "epoch %d: validation Recall@1 %.4f (best %.4f)", epoch + 1, recall, self.best_recall
        )


class MlflowEpochLogger(tf.keras.callbacks.Callback):
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for name, value in (logs or {}).items():
            if name != "val_recall_at_1" and np.isfinite(value):
                mlflow.log_metric(f"train_{name}", float(value), step=epoch)


def _optimizer(settings: Settings, total_steps: int) -> tf.keras.optimizers.Optimizer:
    rate: float | tf.keras.optimizers.schedules.LearningRateSchedule = settings.train.learning_rate
    warmup_steps = int(settings.train.warmup_fraction * total_steps)
    if settings.train.lr_decay == "cosine":
        # Linear warm-up from 0 to learning_rate, then cosine decay to 0 over the rest.
        rate = tf.keras.optimizers.schedules.CosineDecay(
            0.0 if warmup_steps else settings.train.learning_rate,
            max(1, total_steps - warmup_steps),
            warmup_target=settings.train.learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    return tf.keras.optimizers.Adam(rate)


def compile_model(
    settings: Settings,
    total_steps: int,
    optimizer_wrapper=None,
    classes: int | None = None,
) -> SimilarityTrainer:
    """Build and compile the similarity model; `optimizer_wrapper` lets Horovod wrap it.

    `classes`: size of the auxiliary classifier's output (labels must lie in 0..classes-1);
    by default the number of Fashion-MNIST label names.
    """
    with dtype_policy(settings.train.precision):
        model = build_similarity_model(
            settings.model, seed=settings.train.seed, model_class=SimilarityTrainer
        )
        model.configure_training(
            max_shift=settings.model.augment_shift if settings.model.augment else None,
            classifier_weight=settings.train.classifier_weight,
            classes=classes or len(settings.fashion_mnist.label_names),
        )
    optimizer = _optimizer(settings, total_steps)
    if optimizer_wrapper is not None:
        optimizer = optimizer_wrapper(optimizer)
    loss = MultiSimilarityLoss(
        distance=settings.train.distance,
        alpha=settings.train.loss_alpha,
        beta=settings.train.loss_beta,
        epsilon=settings.train.loss_epsilon,
        lmda=settings.train.loss_lmda,
    )
    model.compile(optimizer=optimizer, loss=loss, jit_compile=settings.train.jit_compile)
    return model


def training_batches(
    rows: LabelledImages, settings: Settings, steps_per_epoch: int
) -> tf.data.Dataset:
    """Every epoch's class-balanced batches (epochs × steps_per_epoch in all)."""
    return class_balanced_batches(
        rows,
        settings.train.classes_per_batch,
        settings.train.examples_per_class,
        steps=settings.train.epochs * steps_per_epoch,
        seed=settings.train.seed,
    )


def steps_per_epoch(settings: Settings, train_rows: int) -> int:
    if settings.train.steps_per_epoch:
        return settings.train.steps_per_epoch
    batch = settings.train.classes_per_batch * settings.train.examples_per_class
    return max(1, math.ceil(train_rows / batch))


def log_model(model: tf.keras.Model, example: np.ndarray, settings: Settings) -> str:
    """Log the inference embedding model as an MLflow TensorFlow model; returns its URI."""
    inference = embedding_model(model, settings.model.mirror_average)
    signature = mlflow.models.infer_signature(example, embed(inference, example))
    info = mlflow.tensorflow.log_model(
        inference,
        name=MODEL_ARTIFACT,
        signature=signature,
        pip_requirements=pinned_requirements(MODEL_DISTRIBUTIONS),
    )
    return info.model_uri


def fit_and_validate(
    settings: Settings,
    train_rows: LabelledImages,
    validation_rows: LabelledImages,
    extra_callbacks: list[tf.keras.callbacks.Callback] | None = None,
    verbose: int | None = None,
) -> FitOutcome:
    """Fit on `train_rows`, keep the epoch with the best validation Recall@1.

    Logs per-epoch metrics to the active MLflow run (the caller owns the run); logs no model,
    so hyperparameter trials can call it as cheaply as `train` does.
    """
    tf.keras.utils.set_random_seed(settings.train.seed)
    if len(np.unique(train_rows.labels)) < 2:
        raise ValueError("training needs at least two classes")
    steps = steps_per_epoch(settings, len(train_rows))
    log.info(
        "training on %d images (%d for validation), %d epochs × %d steps",
        len(train_rows),
        len(validation_rows),
        settings.train.epochs,
        steps,
    )
    model = compile_model(
        settings,
        total_steps=settings.train.epochs * steps,
        classes=max(int(train_rows.labels.max()) + 1, len(settings.fashion_mnist.label_names)),
    )
    validation = ValidationRecall(
        validation_rows, settings.train.validation_queries, settings.model.mirror_average
    )
    callbacks: list[tf.keras.callbacks.Callback] = [*(extra_callbacks or []), MlflowEpochLogger()]
    if len(validation_rows) > 1:
        callbacks.insert(0, validation)
    history = model.fit(
        training_batches(train_rows, settings, steps),
        epochs=settings.train.epochs,
        steps_per_epoch=steps,
        callbacks=callbacks,
        verbose=keras_verbosity() if verbose is None else verbose,
    )
    if validation.best_weights is not None:
        model.set_weights(validation.best_weights)
    return FitOutcome(
        model=model,
        best_epoch=validation.best_epoch + 1,
        val_recall_at_1=validation.best_recall,
        history={key: [float(v) for v in values] for key, values in history.history.items()},
    )


def train(
    settings: Settings, lake: Lakehouse, table: TableVersion, run_name: str = "train"
) -> TrainResult:
    """Train on `table` (train split, minus validation rows) and log everything to MLflow."""
    rows = training_rows(lake, table, settings)
    train_rows, validation_rows = split_validation(rows, settings.train.validation_fraction)
    if len(np.unique(train_rows.labels)) < 2:
        raise ValueError("training needs at least two classes")

    setup_mlflow(settings.mlflow)
    with tracked_step(
        "train",
        settings,
        {"training": table},
        run_name=run_name,
        params={"train_rows": len(train_rows), "validation_rows": len(validation_rows)},
    ) as run:
        fitted = fit_and_validate(settings, train_rows, validation_rows)
        mlflow.log_metrics(
            {"best_epoch": fitted.best_epoch, "best_val_recall_at_1": fitted.val_recall_at_1}
        )
        model_uri = log_model(fitted.model, train_rows.pixels[:4], settings)
        return TrainResult(
            run_id=run.info.run_id,
            model_uri=model_uri,
            table=table,
            best_epoch=fitted.best_epoch,
            val_recall_at_1=fitted.val_recall_at_1,
            history=fitted.history,
        )
