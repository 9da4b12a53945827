"""CNN backbones: the default small conv stack (configurable width/depth)."""

from __future__ import annotations

import tensorflow as tf

from simrec.config import ModelSettings

layers = tf.keras.layers


def conv_stack(inputs: tf.Tensor, settings: ModelSettings) -> tf.Tensor:
    """Conv blocks (conv[-bn]-relu × convs_per_block, max-pool, dropout), flatten, optional dense.

    Flatten, not global pooling: where a feature sits matters for telling garments apart.
    """
    features = inputs
    for block, filters in enumerate(settings.conv_filters):
        for conv in range(settings.convs_per_block):
            features = layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=not settings.batch_norm,
                name=f"block{block}_conv{conv}",
            )(features)
            if settings.batch_norm:
                features = layers.BatchNormalization(name=f"block{block}_bn{conv}")(features)
            features = layers.Activation("relu", name=f"block{block}_relu{conv}")(features)
        features = layers.MaxPool2D(name=f"block{block}_pool")(features)
        if settings.dropout:
            features = layers.Dropout(settings.dropout, name=f"block{block}_dropout")(features)
    features = layers.Flatten(name="flatten")(features)
    if settings.dense_units:
        features = layers.Dense(settings.dense_units, activation="relu", name="dense")(features)
        if settings.dropout:
            features = layers.Dropout(settings.dropout, name="dense_dropout")(features)
    return features
