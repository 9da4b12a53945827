"""Class-balanced batches drawn from a stream of rows, and the tf.data pipeline that decodes them.

MultiSimilarityLoss learns from pairs inside a batch, so a batch needs several examples of each
of several classes (what `MultiShotMemorySampler` gives single-process training from memory).
From a stream: rows go into per-class buffers; once `buffer_rows` rows are buffered, a batch is
`classes_per_batch` random classes among those holding at least `examples_per_class` rows, with
that many random rows of each; then reading resumes until the buffer is full again. The buffer
is both the shuffle buffer and what makes balanced batches possible; it holds at most
`buffer_rows` rows (plus one read), never the shard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf

Example = tuple[bytes, int]


class ClassBalancedBatches:
    def __init__(
        self,
        classes_per_batch: int,
        examples_per_class: int,
        buffer_rows: int,
        seed: int = 0,
    ):
        if classes_per_batch < 2 or examples_per_class < 2:
            raise ValueError("a batch needs at least 2 classes with at least 2 examples each")
        self.classes_per_batch = classes_per_batch
        self.examples_per_class = examples_per_class
        self.batch_size = classes_per_batch * examples_per_class
        self.buffer_rows = max(buffer_rows, self.batch_size)
        self.rng = np.random.default_rng(seed)
        self.buffers: dict[int, list[bytes]] = {}
        self.buffered = 0

    def __call__(self, rows: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[list[Example]]:
        """Batches from `rows`, an iterable of (images, labels) pieces; when it ends, the
        batches the remaining buffer still allows."""
        for images, labels in rows:
            for image, label in zip(images, labels, strict=True):
                self.buffers.setdefault(int(label), []).append(image)
            self.buffered += len(labels)
            while self.buffered >= self.buffer_rows:
                batch = self._draw()
                if batch is None:  # not enough classes buffered yet: keep reading
                    break
                yield batch
        while (batch := self._draw()) is not None:
            yield batch

    def _draw(self) -> list[Example] | None:
        eligible = [
            label
            for label, images in self.buffers.items()
            if len(images) >= self.examples_per_class
        ]
        if len(eligible) < self.classes_per_batch:
            return None
        batch: list[Example] = []
        for label in self.rng.choice(sorted(eligible), self.classes_per_batch, replace=False):
            images = self.buffers[int(label)]
            for _ in range(self.examples_per_class):
                # Swap a random row to the end and pop it: O(1) sampling without replacement.
                position = int(self.rng.integers(len(images)))
                images[position], images[-1] = images[-1], images[position]
                batch.append((images.pop(), int(label)))
        self.buffered -= len(batch)
        return batch


def decode_png(
    image: tf.Tensor, label: tf.Tensor, image_size: int, channels: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """PNG bytes → raw 0-255 pixels (image_size × image_size × channels); the model scales them."""
    pixels = tf.io.decode_png(image, channels=channels)
    # Same-size bilinear resize is the identity; it also gives the tensor its static shape.
    pixels = tf.image.resize(pixels, [image_size, image_size])
    return pixels, label


def batched_dataset(
    make_batches: Callable[[], Iterable[list[Example]]],
    batch_size: int,
    image_size: int,
    channels: int,
) -> tf.data.Dataset:
    """A tf.data pipeline over the batches `make_batches()` yields: PNG decoding in parallel,
    batch order kept."""

    def examples() -> Iterator[Example]:
        for batch in make_batches():
            if len(batch) != batch_size:
                raise ValueError(f"expected batches of {batch_size}, got {len(batch)}")
            yield from batch

    dataset = tf.data.Dataset.from_generator(
        examples,
        output_signature=(
            tf.TensorSpec(shape=(), dtype=tf.string),
            tf.TensorSpec(shape=(), dtype=tf.int64),
        ),
    )
    # deterministic=True keeps the order, so each `batch` below is one class-balanced batch.
    dataset = dataset.map(
        lambda image, label: decode_png(image, label, image_size, channels),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
