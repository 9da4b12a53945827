"""The training-time wrapper of the similarity model: augmentation, MultiSimilarityLoss on the
embeddings and, optionally, an auxiliary softmax classifier on the same embeddings.

`SimilarityTrainer` is the embedding model's own graph (same inputs, outputs and layers, so
`predict`, `get_weights` and `embedding_model` behave as before); only its train step differs.
The classifier head is a layer of the trainer, not of the graph: inference never runs it.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow_similarity.models import SimilarityModel

from simrec.model.augment import flip_and_shift


class SimilarityTrainer(SimilarityModel):
    """A functional `SimilarityModel` whose train step augments the batch and adds
    `classifier_weight` × softmax cross-entropy of a linear head to the compiled metric loss."""

    def configure_training(
        self, max_shift: int | None, classifier_weight: float, classes: int
    ) -> None:
        """`max_shift` None: no augmentation; `classifier_weight` 0: the metric loss alone."""
        self.max_shift = max_shift
        self.classifier_weight = classifier_weight
        self.classifier = None
        if classifier_weight > 0:
            self.classifier = tf.keras.layers.Dense(
                classes, name="auxiliary_classifier", dtype="float32"
            )
            self.classifier.build(self.output_shape)
            self.classifier_loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def train_step(self, data):
        images, labels = data
        images = tf.cast(images, tf.float32)
        if self.max_shift is not None:
            images = flip_and_shift(images, self.max_shift)
        variables = self.trainable_variables
        if self.classifier is not None:
            variables = variables + self.classifier.trainable_variables
        with tf.GradientTape() as tape:
            embeddings = self(images, training=True)
            metric_loss = self.compute_loss(images, labels, embeddings)
            loss = metric_loss
            if self.classifier is not None:
                logits = self.classifier(embeddings)
                classifier_loss = self.classifier_loss(labels, logits)
                loss = metric_loss + self.classifier_weight * classifier_loss
        # minimize(), as Keras' own train step: a Horovod-wrapped optimizer averages there.
        self.optimizer.minimize(loss, variables, tape=tape)
        logs = {"loss": loss, "metric_loss": metric_loss}
        if self.classifier is not None:
            logs["classifier_loss"] = classifier_loss
        return logs
