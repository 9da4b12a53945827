"""Training batches and augmentation: class-balanced, reproducible, garment-safe."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from simrec.model.augment import flip_and_shift
from simrec.model.data import LabelledImages
from simrec.model.feeding import class_balanced_batches


def _rows() -> LabelledImages:
    labels = np.repeat([2, 4, 7], [5, 9, 40])
    # Each image's first pixel is its row number: batches can be traced back to their rows.
    pixels = np.zeros((len(labels), 4, 4, 1), dtype=np.uint8)
    pixels[:, 0, 0, 0] = np.arange(len(labels))
    return LabelledImages(np.arange(len(labels)).astype(object), labels, pixels)


def test_batches_are_class_balanced_from_the_rows_own_classes_and_reproducible() -> None:
    rows = _rows()
    batches = list(class_balanced_batches(rows, 2, 3, steps=20, seed=1))
    assert len(batches) == 20
    seen_classes = set()
    for pixels, labels in batches:
        labels = labels.numpy()
        assert pixels.dtype == tf.uint8 and pixels.shape == (6, 4, 4, 1)
        assert len(set(labels[:3])) == 1 and len(set(labels[3:])) == 1 and labels[0] != labels[3]
        # every image is a row of its stated class
        assert (rows.labels[pixels.numpy()[:, 0, 0, 0]] == labels).all()
        seen_classes |= set(labels.tolist())
    assert seen_classes == {2, 4, 7}
    again = list(class_balanced_batches(rows, 2, 3, steps=20, seed=1))
    assert all((a[1].numpy() == b[1].numpy()).all() for a, b in zip(batches, again, strict=True))


def test_flip_and_shift_moves_each_image_by_at_most_max_shift_and_never_upside_down() -> None:
    images = np.zeros((64, 28, 28, 1), dtype=np.float32)
    images[:, 5, 20, 0] = 1.0  # one bright pixel near the top right
    out = flip_and_shift(tf.constant(images), 2).numpy()
    assert out.shape == images.shape
    assert np.allclose(out.sum(axis=(1, 2, 3)), 1.0)  # shifted within the pad: nothing lost
    rows, cols = np.nonzero(out[..., 0])[1:]
    assert (np.abs(rows - 5) <= 2).all()  # vertical: a shift only, never a flip
    mirrored = np.abs(cols - 7) <= 2
    assert ((np.abs(cols - 20) <= 2) | mirrored).all()
    assert 0 < mirrored.sum() < len(images)  # some images mirrored, some not
    assert len({(r, c) for r, c in zip(rows, cols, strict=True)}) > 4  # shifts vary per image
