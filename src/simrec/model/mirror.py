"""Mirror averaging: an image's embedding is the normalised mean of the embeddings of the image
and of its left-right mirror (test-time augmentation with the one flip training also applies).

It is part of the inference graph (`mirrored(model)`), so the logged model, the packaged
SavedModel, evaluation and serving all embed the same way. The two views go through the network
as one batch of 2N. Embeddings become exactly mirror-invariant; inference costs twice the
convolutions (bench.quality records what it buys).
"""

from __future__ import annotations

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="simrec")
class MirrorStack(tf.keras.layers.Layer):
    """(N, H, W, C) -> (2N, H, W, C): the batch, then the same images mirrored left-right."""

    def call(self, images: tf.Tensor) -> tf.Tensor:
        return tf.concat([images, tf.reverse(images, axis=[2])], axis=0)


@tf.keras.utils.register_keras_serializable(package="simrec")
class MirrorMean(tf.keras.layers.Layer):
    """(2N, D) -> (N, D): each image's embedding plus its mirror's, L2-normalised."""

    def call(self, embeddings: tf.Tensor) -> tf.Tensor:
        image, mirror = tf.split(embeddings, 2, axis=0)
        return tf.math.l2_normalize(image + mirror, axis=1)


def mirrored(model: tf.keras.Model, name: str = "simrec_embedding") -> tf.keras.Model:
    """`model` (pixels -> L2-normalised embedding) wrapped to embed with mirror averaging."""
    pixels = tf.keras.Input(shape=model.input_shape[1:], name="pixels")
    outputs = MirrorMean(name="mirror_mean")(model(MirrorStack(name="mirror_stack")(pixels)))
    return tf.keras.Model(pixels, outputs, name=name)


def single_view(model: tf.keras.Model) -> tf.keras.Model:
    """The network inside a `mirrored` model (embedding each image alone); `model` itself when it
    is not mirror-averaged. For measuring what the averaging buys."""
    if not any(isinstance(layer, MirrorMean) for layer in model.layers):
        return model
    return next(layer for layer in model.layers if isinstance(layer, tf.keras.Model))
