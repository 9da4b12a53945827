"""Training throughput (images/s) of the simrec train step, of variants that each undo one
speed/quality change, and of a plain Keras softmax classifier with the same backbone and batch
size, all on the same class-balanced batches in one process, one after the other."""

from __future__ import annotations

import os
import time
from typing import Any

import tensorflow as tf
from tensorflow_similarity.samplers import MultiShotMemorySampler

from simrec.config import Settings
from simrec.model.backbone import conv_stack
from simrec.model.data import LabelledImages
from simrec.model.precision import dtype_policy
from simrec.model.train import compile_model, training_batches

WARMUP_STEPS = 15  # tracing, first-step allocations: not timed
TIMED_STEPS = 60

# Each variant undoes one change of the default configuration (or tries a rejected lever).
VARIANTS: dict[str, dict[str, Any]] = {
    "simrec_default": {},
    "without_auxiliary_classifier": {"train.classifier_weight": 0.0},
    "without_augmentation": {"model.augment": False},
    "with_xla_jit_compile": {"train.jit_compile": True},
    "float32_compute": {"train.precision": "float32"},
}


def _timed_fit(model: tf.keras.Model, data: Any, batch: int) -> dict[str, float]:
    model.fit(data, epochs=1, steps_per_epoch=WARMUP_STEPS, verbose=0)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=TIMED_STEPS, verbose=0)
    seconds = time.perf_counter() - started
    return {
        "images_per_s": round(TIMED_STEPS * batch / seconds, 1),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def plain_classifier(settings: Settings, classes: int) -> tf.keras.Model:
    """Same input scaling and conv stack as the similarity model; a softmax on top."""
    size, channels = settings.model.image_size, settings.model.channels
    with dtype_policy(settings.train.precision):  # the same compute dtype as simrec's step
        inputs = tf.keras.layers.Input(shape=(size, size, channels), name="pixels")
        features = tf.keras.layers.Rescaling(1.0 / 255)(inputs)
        logits = tf.keras.layers.Dense(classes, dtype="float32")(
            conv_stack(features, settings.model)
        )
        model = tf.keras.Model(inputs, logits, name="plain_classifier")
    model.compile(
        optimizer=tf.keras.optimizers.Adam(settings.train.learning_rate),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def measure(settings: Settings, rows: LabelledImages) -> dict[str, Any]:
    batch = settings.train.classes_per_batch * settings.train.examples_per_class
    classes = int(rows.labels.max()) + 1
    steps = WARMUP_STEPS + TIMED_STEPS
    timed = settings.with_overrides({"train.epochs": 1, "train.steps_per_epoch": steps})
    results: dict[str, Any] = {}
    for name, overrides in VARIANTS.items():
        variant = timed.with_overrides(overrides)
        tf.keras.utils.set_random_seed(variant.train.seed)
        model = compile_model(variant, total_steps=steps, classes=classes)
        results[name] = _timed_fit(model, training_batches(rows, variant, steps), batch)
    # The feed this project used before: TF Similarity's in-memory sampler (a Keras Sequence).
    model = compile_model(timed, total_steps=steps, classes=classes)
    sampler = MultiShotMemorySampler(
        rows.pixels,
        rows.labels,
        classes_per_batch=settings.train.classes_per_batch,
        examples_per_class_per_batch=settings.train.examples_per_class,
        steps_per_epoch=steps,
    )
    results["with_multishot_sampler_feed"] = _timed_fit(model, sampler, batch)
    tf.keras.utils.set_random_seed(settings.train.seed)
    plain = plain_classifier(timed, classes)
    plain_batches = training_batches(rows, timed, steps)
    results["plain_keras_classifier"] = _timed_fit(plain, plain_batches, batch)
    results["simrec_vs_plain_classifier"] = round(
        results["simrec_default"]["images_per_s"]
        / results["plain_keras_classifier"]["images_per_s"],
        3,
    )
    results["batch"] = batch
    results["timed_steps"] = TIMED_STEPS
    return results
