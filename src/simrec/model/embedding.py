"""The similarity model: raw uint8 pixels in, L2-normalised embedding out.

Pixels are scaled exactly once, by the model's own `Rescaling` layer, so callers (training,
indexing, serving) always pass raw 0-255 pixels.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow_similarity.layers import MetricEmbedding
from tensorflow_similarity.models import SimilarityModel

from simrec.config import ModelSettings
from simrec.model.backbone import conv_stack
from simrec.model.mirror import mirrored
from simrec.model.precision import float32_copy

EMBEDDING_LAYER = "metric_embedding"


def build_similarity_model(
    settings: ModelSettings, seed: int = 0, model_class: type[SimilarityModel] = SimilarityModel
) -> SimilarityModel:
    """The inference graph (no augmentation: training applies it to the batch, see
    `simrec.model.trainer`). `seed` fixes the initial weights."""
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.layers.Input(
        shape=(settings.image_size, settings.image_size, settings.channels), name="pixels"
    )
    features = tf.keras.layers.Rescaling(1.0 / 255, name="scale_pixels")(inputs)
    features = conv_stack(features, settings)
    # float32 even under a mixed-precision policy: L2 normalisation and the loss need it.
    outputs = MetricEmbedding(settings.embedding_dim, name=EMBEDDING_LAYER, dtype="float32")(
        features
    )
    return model_class(inputs, outputs, name="simrec_similarity")


def embedding_model(model: tf.keras.Model, mirror_average: bool) -> tf.keras.Model:
    """A plain float32 Keras model with the same graph and weights, for saving and serving
    (a model trained under mixed precision is rebuilt with float32 layers); with
    `mirror_average`, it embeds each image with its mirror (`simrec.model.mirror`)."""
    model = float32_copy(model)
    # A plain functional model, also inside the mirrored one: nesting the trainer itself would
    # save its optimizer's graph too (e.g. Horovod's allreduce ops) into the inference model.
    name = "simrec_network" if mirror_average else "simrec_embedding"
    plain = tf.keras.Model(model.inputs, model.outputs, name=name)
    return mirrored(plain) if mirror_average else plain


def embed(model: tf.keras.Model, pixels: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Embeddings (float32, L2-normalised by MetricEmbedding) of uint8 pixel batches."""
    if len(pixels) == 0:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    return np.asarray(model.predict(pixels, batch_size=batch_size, verbose=0), dtype=np.float32)
