"""Backbone choice without any download: ImageNet weights from a local file, the logged
random-filter fallback, and any saved Keras model as the backbone."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from simrec.config import StyleSettings, load_settings
from simrec.style.backbone import VGG16_NOTOP_FILE, build_backbone
from simrec.style.features import StyleFeaturizer

SMALL = {"image_size": 32, "layers": ["block1_conv2", "block2_conv1"], "layer_weights": [1, 1]}
# Every style setting from conf/simrec.yaml (the only source of defaults), VGG16 unless changed.
DEFAULTS = load_settings().style.model_dump()
DEFAULTS.update(backbone="vgg16", weights="imagenet", weights_path=None)


def _style(**values: object) -> StyleSettings:
    return StyleSettings(**{**DEFAULTS, **SMALL, **values})


def _conv_kernel(model: tf.keras.Model) -> np.ndarray:
    return model.get_layer("block1_conv1").get_weights()[0]


def test_local_weights_file_is_used_and_recorded(tmp_path: Path) -> None:
    # Stand-in for the ImageNet file: VGG16 notop weights saved in the same h5 layout.
    donor = tf.keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    weights_file = tmp_path / VGG16_NOTOP_FILE
    donor.save_weights(str(weights_file))
    backbone = build_backbone(_style(weights_path=weights_file))
    assert backbone.weights_source == f"imagenet:{weights_file}"
    np.testing.assert_array_equal(_conv_kernel(backbone.model), _conv_kernel(donor))


def test_keras_cache_is_looked_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    donor = tf.keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    (tmp_path / "models").mkdir()
    donor.save_weights(str(tmp_path / "models" / VGG16_NOTOP_FILE))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert build_backbone(_style()).weights_source.startswith("imagenet:")


def test_missing_weights_fall_back_to_seeded_random_filters_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty cache
    with caplog.at_level(logging.WARNING, logger="simrec.style.backbone"):
        first = build_backbone(_style(seed=3))
    assert first.weights_source == "random(seed=3)"
    assert "ImageNet weights not found" in caplog.text
    again = build_backbone(_style(seed=3))
    np.testing.assert_array_equal(_conv_kernel(first.model), _conv_kernel(again.model))
    other = build_backbone(_style(seed=4))
    assert not np.array_equal(_conv_kernel(first.model), _conv_kernel(other.model))
    with pytest.raises(FileNotFoundError):
        build_backbone(_style(weights_path=tmp_path / "missing.h5"))


def test_any_saved_keras_model_can_be_the_backbone(tmp_path: Path) -> None:
    inputs = tf.keras.Input((24, 24, 1))
    scaled = tf.keras.layers.Rescaling(1 / 255)(inputs)
    conv = tf.keras.layers.Conv2D(4, 3, activation="relu", name="conv_a")(scaled)
    conv = tf.keras.layers.Conv2D(6, 3, activation="relu", name="conv_b")(conv)
    path = tmp_path / "own.keras"
    tf.keras.Model(inputs, tf.keras.layers.GlobalAveragePooling2D()(conv)).save(path)
    settings = _style(
        backbone="keras_model",
        backbone_path=path,
        layers=["conv_a", "conv_b"],
        layer_weights=[1, 1],
        pca_dims=3,
    )
    featurizer = StyleFeaturizer(settings)
    assert featurizer.image_size == 24 and featurizer.backbone.channels == 1
    pixels = np.random.default_rng(0).integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)
    vectors = featurizer.fit_transform(pixels)  # RGB in, converted to the model's grey input
    assert vectors.shape == (6, 6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    featurizer.save(tmp_path / "featurizer")
    loaded = StyleFeaturizer.load(tmp_path / "featurizer")
    np.testing.assert_allclose(loaded.transform(pixels), vectors, atol=1e-5)
    with pytest.raises(ValueError, match="no layer"):
        build_backbone(settings.model_copy(update={"layers": ["nope"]}))
