"""Training-time augmentation for small garment images, applied to whole batches in the train
step (so any data source gets it and the saved inference model holds no augmentation layers).

Mirror left-right (garments are roughly symmetric; never upside down) and shift by up to
`max_shift` pixels each way, filling with the background (zero), one draw per image.
"""

from __future__ import annotations

import tensorflow as tf


def flip_and_shift(images: tf.Tensor, max_shift: int) -> tf.Tensor:
    """A batch (N, H, W, C) mirrored at random per image and shifted by -max_shift..max_shift
    pixels per axis per image; vectorised (two gathers), cheap next to the convolutions."""
    batch = tf.shape(images)[0]
    height, width = tf.shape(images)[1], tf.shape(images)[2]  # static shape may be unknown
    flip = tf.random.uniform([batch, 1, 1, 1]) < 0.5
    images = tf.where(flip, tf.reverse(images, axis=[2]), images)
    if max_shift <= 0:
        return images
    padded = tf.pad(images, [[0, 0], [max_shift, max_shift], [max_shift, max_shift], [0, 0]])
    offsets = tf.random.uniform([batch, 2], 0, 2 * max_shift + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[None, :]
    cols = offsets[:, 1:] + tf.range(width)[None, :]
    shifted = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(shifted, cols, axis=2, batch_dims=1)
