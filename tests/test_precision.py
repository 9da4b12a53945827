"""Mixed-precision training: bf16 compute while training, a float32 model to save and serve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from simrec.model.embedding import embed, embedding_model
from simrec.model.precision import cpu_has_bf16, dtype_policy, resolve_policy
from simrec.model.train import compile_model, train
from simrec.runs import load_embedding_model


def test_auto_precision_follows_the_cpu_flags(tmp_path: Path, monkeypatch) -> None:
    with_bf16 = tmp_path / "bf16"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 fma\n")
    without = tmp_path / "plain"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    assert cpu_has_bf16(with_bf16)
    assert not cpu_has_bf16(without)
    assert not cpu_has_bf16(tmp_path / "missing")
    assert resolve_policy("float32") == "float32"
    assert resolve_policy("mixed_bfloat16") == "mixed_bfloat16"
    monkeypatch.setattr("simrec.model.precision.cpu_has_bf16", lambda: False)
    assert resolve_policy("auto") == "float32"


def test_policy_is_scoped_to_the_model_build() -> None:
    before = tf.keras.mixed_precision.global_policy().name
    with dtype_policy("mixed_bfloat16") as name:
        assert name == "mixed_bfloat16"
        assert tf.keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert tf.keras.mixed_precision.global_policy().name == before


def test_bf16_training_saves_a_float32_model_with_the_trained_weights(settings) -> None:
    mixed = settings.with_overrides({"train.precision": "mixed_bfloat16"})
    model = compile_model(mixed, total_steps=4, classes=10)
    assert any(layer.compute_dtype == "bfloat16" for layer in model.layers)
    assert model.output.dtype == tf.float32  # the loss sees float32 embeddings
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (80, 28, 28, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(10), 8)
    model.fit(pixels, labels, batch_size=80, epochs=2, verbose=0)

    served = embedding_model(model, mirror_average=False)
    assert all(layer.compute_dtype in (None, "float32") for layer in served.layers)
    trained, exported = embed(model, pixels), embed(served, pixels)
    # Same weights, only the arithmetic's precision differs.
    assert np.allclose(trained, exported, atol=0.02)
    assert (trained * exported).sum(axis=1).min() > 0.999


def test_train_under_bf16_logs_a_float32_model(fashion_lake, make_settings, tmp_path) -> None:
    _, lake, table = fashion_lake
    overrides = {"train.precision": "mixed_bfloat16", "train.epochs": 1, "train.steps_per_epoch": 5}
    mixed = make_settings(tmp_path, **overrides)
    result = train(mixed, lake, table)
    logged = load_embedding_model(result.run_id)
    layers = [each for each in logged.submodules if isinstance(each, tf.keras.layers.Layer)]
    assert any("_conv" in layer.name for layer in layers)  # the nested network's layers too
    assert all(layer.compute_dtype in (None, "float32") for layer in layers)
    assert tf.keras.mixed_precision.global_policy().name == "float32"
