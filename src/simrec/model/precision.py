"""Mixed precision for training: the Keras dtype policy the model's layers are built under.

bf16 compute with float32 weights roughly doubles the conv throughput of CPUs that have bf16
instructions (AVX512_BF16, AMX) and is emulated, slowly, on those that do not; so `auto`
chooses it only where /proc/cpuinfo lists them. The saved inference model is always float32
(`float32_copy`): serving machines need no bf16 support and answer with full-precision maths.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import tensorflow as tf

log = logging.getLogger(__name__)

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return any(flag in flags.split() for flag in BF16_CPU_FLAGS)


def resolve_policy(precision: str) -> str:
    """The Keras policy name for a `train.precision` setting."""
    if precision != "auto":
        return precision
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


@contextmanager
def dtype_policy(precision: str) -> Iterator[str]:
    """Layers built inside use the resolved policy; the previous global policy comes back after."""
    previous = tf.keras.mixed_precision.global_policy()
    name = resolve_policy(precision)
    if name != previous.name:
        log.info("training compute dtype policy: %s", name)
    tf.keras.mixed_precision.set_global_policy(name)
    try:
        yield name
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def _float32_config(config: Any) -> Any:
    if isinstance(config, dict):
        return {
            key: "float32" if key == "dtype" and isinstance(value, dict) else _float32_config(value)
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [_float32_config(value) for value in config]
    return config


def float32_copy(model: tf.keras.Model) -> tf.keras.Model:
    """`model` itself when every layer computes in float32; else the same functional graph
    rebuilt with float32 layers, holding the same (float32) weights."""
    if all(layer.compute_dtype in (None, "float32") for layer in model.layers):
        return model
    graph = tf.keras.Model(model.inputs, model.outputs)  # plain functional: its config is the graph
    copy = tf.keras.Model.from_config(_float32_config(graph.get_config()))
    copy.set_weights(graph.get_weights())
    return copy
