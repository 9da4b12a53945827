"""Training throughput (images/s) of the simrec train step, of variants that each undo one
speed/quality change, and of a plain Keras softmax classifier with the same backbone and batch
size, all on the same class-balanced batches in one process, one after the other."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow_similarity.samplers import MultiShotMemorySampler

from simrec.config import Settings
from simrec.model.backbone import conv_stack
from simrec.model.data import LabelledImages
from simrec.model.precision import dtype_policy
from simrec.model.train import compile_model, training_batches

WARMUP_STEPS = 15  # tracing, first-step allocations: not timed
TIMED_STEPS = 60
# Every contender is timed in each round, rounds one after the other, and its median kept:
# one pass of 60 steps each moved by ±15 % with whatever else the machine was doing.
ROUNDS = 3

# Each variant undoes one change of the default configuration (or tries a rejected lever).
VARIANTS: dict[str, dict[str, Any]] = {
    "simrec_default": {},
    "without_auxiliary_classifier": {"train.classifier_weight": 0.0},
    "without_augmentation": {"model.augment": False},
    "with_xla_jit_compile": {"train.jit_compile": True},
    "float32_compute": {"train.precision": "float32"},
}


def _timed_rounds(contenders: dict[str, tuple[tf.keras.Model, Any]], batch: int) -> dict:
    """images/s of each (model, data) contender: warmed up once, then timed over `ROUNDS`
    interleaved rounds of `TIMED_STEPS` steps; the median round and every round's figure."""
    for model, data in contenders.values():
        model.fit(data, epochs=1, steps_per_epoch=WARMUP_STEPS, verbose=0)
    rounds: dict[str, list[float]] = {name: [] for name in contenders}
    loads: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(ROUNDS):
        for name, (model, data) in contenders.items():
            loads[name].append(round(os.getloadavg()[0], 2))
            started = time.perf_counter()
            model.fit(data, epochs=1, steps_per_epoch=TIMED_STEPS, verbose=0)
            rounds[name].append(round(TIMED_STEPS * batch / (time.perf_counter() - started), 1))
    return {
        name: {
            "images_per_s": float(np.median(rounds[name])),
            "rounds_images_per_s": rounds[name],
            "load_average_1min": loads[name],
        }
        for name in contenders
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
    steps = WARMUP_STEPS + ROUNDS * TIMED_STEPS
    timed = settings.with_overrides({"train.epochs": 1, "train.steps_per_epoch": steps})
    contenders: dict[str, tuple[tf.keras.Model, Any]] = {}
    for name, overrides in VARIANTS.items():
        variant = timed.with_overrides(overrides)
        tf.keras.utils.set_random_seed(variant.train.seed)
        model = compile_model(variant, total_steps=steps, classes=classes)
        contenders[name] = (model, training_batches(rows, variant, steps))
    # The feed this project used before: TF Similarity's in-memory sampler (a Keras Sequence).
    model = compile_model(timed, total_steps=steps, classes=classes)
    sampler = MultiShotMemorySampler(
        rows.pixels,
        rows.labels,
        classes_per_batch=settings.train.classes_per_batch,
        examples_per_class_per_batch=settings.train.examples_per_class,
        steps_per_epoch=steps,
    )
    contenders["with_multishot_sampler_feed"] = (model, sampler)
    # The same feed with tf.data's autotuner back on (`simrec.model.feeding` turns it off).
    model = compile_model(timed, total_steps=steps, classes=classes)
    autotuned = tf.data.Options()
    autotuned.autotune.enabled = True
    contenders["with_tf_data_autotune"] = (
        model,
        training_batches(rows, timed, steps).with_options(autotuned),
    )
    tf.keras.utils.set_random_seed(settings.train.seed)
    plain = plain_classifier(timed, classes)
    contenders["plain_keras_classifier"] = (plain, training_batches(rows, timed, steps))
    results: dict[str, Any] = _timed_rounds(contenders, batch)
    results["simrec_vs_plain_classifier"] = round(
        results["simrec_default"]["images_per_s"]
        / results["plain_keras_classifier"]["images_per_s"],
        3,
    )
    results["batch"] = batch
    results["timed_steps"] = TIMED_STEPS
    results["rounds"] = ROUNDS
    return results
