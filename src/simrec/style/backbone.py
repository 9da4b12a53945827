"""The CNN whose feature maps give style: Keras VGG16 or SqueezeNet v1.1 (ImageNet weights when
on disk) or any saved Keras model, cut after the deepest chosen layer, one output per layer.

Nothing here downloads weights. `weights: imagenet` uses the backbone's "notop" weights file
from `style.weights_path` or the Keras cache (SqueezeNet's is checksum-verified and loaded by
layer name; `simrec style fetch-weights` downloads it); without one it falls back, with a
warning, to seeded
random filters (random convolutional filters still give usable texture statistics, Ustyuzhaninov
et al. 2017, but weaker than ImageNet ones). What was used is recorded as `weights_source`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from simrec.config import StyleSettings
from simrec.style.squeezenet import load_pretrained, squeezenet_v11

log = logging.getLogger(__name__)

VGG16_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


@dataclass
class Backbone:
    """A Keras model mapping uint8-range RGB pixels to the chosen layers' feature maps."""

    model: tf.keras.Model
    layers: list[str]
    image_size: int
    channels: int
    preprocess: str  # "vgg16" (caffe: BGR, mean-subtracted) or "none" (the model scales itself)
    weights_source: str

    def feature_maps(self, pixels: np.ndarray, batch_size: int = 32) -> list[np.ndarray]:
        """(N, S, S, C) pixels → one (N, H, W, channels) array per chosen layer."""
        inputs = np.asarray(pixels, dtype=np.float32)
        if self.channels == 1 and inputs.shape[-1] == 3:
            inputs = inputs @ np.array([[0.299], [0.587], [0.114]], dtype=np.float32)
        if self.preprocess == "vgg16":
            inputs = tf.keras.applications.vgg16.preprocess_input(inputs)
        if len(inputs) == 0:
            return [np.zeros((0, *out.shape[1:]), np.float32) for out in self.model.outputs]
        # predict_on_batch per chunk: `predict` builds a data pipeline on every call, which
        # cost as much as the network itself for the 32-image batches style work passes.
        chunks = [
            self.model.predict_on_batch(inputs[start : start + batch_size])
            for start in range(0, len(inputs), batch_size)
        ]
        per_chunk = [chunk if isinstance(chunk, list) else [chunk] for chunk in chunks]
        return [np.concatenate(layer) for layer in zip(*per_chunk, strict=True)]


def keras_cache_file(name: str) -> Path:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models or ~/.keras/models."""
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    return home / "models" / name


def default_weights_file(settings: StyleSettings) -> Path:
    """Where the backbone's ImageNet weights are looked for when weights_path is null."""
    if settings.backbone == "squeezenet":
        if settings.squeezenet is None:
            raise ValueError("style.backbone: squeezenet needs the style.squeezenet section")
        return Path(settings.squeezenet.path).expanduser()
    return keras_cache_file(VGG16_NOTOP_FILE)


def find_vgg16_weights(settings: StyleSettings) -> Path | None:
    """The backbone's ImageNet notop weights file, if it is on disk (configured path first)."""
    candidates = [settings.weights_path] if settings.weights_path else []
    candidates.append(default_weights_file(settings))
    for candidate in candidates:
        if candidate is not None and Path(candidate).expanduser().is_file():
            return Path(candidate).expanduser()
    if settings.weights_path:
        raise FileNotFoundError(f"style.weights_path {settings.weights_path} does not exist")
    return None


def _seeded_random_filters(model: tf.keras.Model, seed: int) -> None:
    """Glorot-uniform kernels and zero biases from numpy's seeded generator: the same filters
    on every machine, independent of TensorFlow's global random state."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            fan_in = np.prod(kernel.shape[:-1])
            fan_out = np.prod(kernel.shape[:-2]) * kernel.shape[-1]
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            layer.set_weights(
                [rng.uniform(-limit, limit, kernel.shape).astype(np.float32), np.zeros_like(bias)]
            )


def _cut(base: tf.keras.Model, layers: list[str], name: str) -> tf.keras.Model:
    known = [layer.name for layer in base.layers]
    missing = [layer for layer in layers if layer not in known]
    if missing:
        raise ValueError(f"backbone has no layer(s) {missing}; it has {known}")
    return tf.keras.Model(base.input, [base.get_layer(layer).output for layer in layers], name=name)


def build_backbone(settings: StyleSettings) -> Backbone:
    if not settings.layers:
        raise ValueError("style.layers must name at least one layer")
    if settings.backbone == "keras_model":
        if settings.backbone_path is None:
            raise ValueError("style.backbone: keras_model needs style.backbone_path")
        base = tf.keras.models.load_model(settings.backbone_path, compile=False)
        shape = base.input_shape
        size = shape[1] or settings.image_size
        return Backbone(
            _cut(base, settings.layers, "style_backbone"),
            list(settings.layers),
            int(size),
            int(shape[-1]),
            "none",
            f"keras_model:{settings.backbone_path}",
        )
    size = settings.image_size
    if settings.backbone == "squeezenet":
        base = squeezenet_v11((size, size, 3))
    else:
        base = tf.keras.applications.VGG16(
            include_top=False, weights=None, input_shape=(size, size, 3)
        )
    weights_file = find_vgg16_weights(settings) if settings.weights == "imagenet" else None
    if weights_file is not None:
        if settings.backbone == "squeezenet":
            sha256 = settings.squeezenet.sha256 if settings.squeezenet else None
            if sha256 is None:
                raise ValueError("style.squeezenet.sha256 is needed to verify the weights")
            load_pretrained(base, weights_file, sha256)
        else:
            base.load_weights(str(weights_file))
        source = f"imagenet:{weights_file}"
    else:
        _seeded_random_filters(base, settings.seed)
        source = f"random(seed={settings.seed})"
        if settings.weights == "imagenet":
            log.warning(
                "%s ImageNet weights not found (style.weights_path or %s) and never "
                "downloaded: falling back to seeded random filters (%s); style features will be "
                "weaker. Put the weights file there (`simrec style fetch-weights`), or set "
                "style.backbone: keras_model.",
                settings.backbone,
                default_weights_file(settings),
                source,
            )
    # Both were trained on Caffe-preprocessed input (BGR, ImageNet means subtracted).
    name = f"{settings.backbone}_style"
    return Backbone(
        _cut(base, settings.layers, name), list(settings.layers), size, 3, "vgg16", source
    )


def load_backbone(path: Path, meta: dict) -> Backbone:
    """A backbone saved by `save_backbone` (the cut model with its weights, whatever their
    source), so a bundle is served with exactly the filters it was built with."""
    model = tf.keras.models.load_model(path, compile=False)
    return Backbone(
        model,
        list(meta["layers"]),
        int(meta["image_size"]),
        int(meta["channels"]),
        meta["preprocess"],
        meta["weights_source"],
    )


def save_backbone(backbone: Backbone, path: Path) -> dict:
    backbone.model.save(path)
    return {
        "layers": backbone.layers,
        "image_size": backbone.image_size,
        "channels": backbone.channels,
        "preprocess": backbone.preprocess,
        "weights_source": backbone.weights_source,
    }
