"""Learning from rooms: training only ever sees training items; batches are room-labelled
without repeated items; augmentation keeps shapes and colours."""

from __future__ import annotations

import numpy as np
import pytest

from simrec.config import configured_section
from simrec.style.train import RoomBatches, augmented_views, room_members, train_head

IDS = np.array([f"i{n}" for n in range(12)], dtype=object)
# Rooms of three or four items; i9..i11 share room "z" with i0.
ROOMS = {
    **{f"i{n}": frozenset({"a"}) for n in range(0, 4)},
    **{f"i{n}": frozenset({"b"}) for n in range(4, 8)},
    "i8": frozenset({"c"}),
    **{f"i{n}": frozenset({"z"}) for n in range(9, 12)},
}
ROOMS["i0"] = frozenset({"a", "z"})


def test_rooms_only_hold_training_items() -> None:
    train = np.ones(12, dtype=bool)
    train[[1, 9]] = False  # held out
    members = room_members(IDS, ROOMS, train, minimum=2)
    flat = {int(p) for room in members for p in room}
    assert not flat & {1, 9}
    assert 8 not in flat  # room "c" has a single item: no positive pair
    assert sorted(map(sorted, (m.tolist() for m in members))) == [
        [0, 2, 3],
        [0, 10, 11],
        [4, 5, 6, 7],
    ]


def test_batches_label_rooms_and_never_repeat_an_item() -> None:
    views = np.random.default_rng(0).normal(size=(2, 12, 5)).astype(np.float32)
    members = room_members(IDS, ROOMS, np.ones(12, dtype=bool), minimum=2)
    batches = RoomBatches(views, members, rooms_per_batch=3, items_per_room=3, steps=20, seed=0)
    for step in range(len(batches)):
        x, y = batches[step]
        assert x.shape[1] == 5 and len(x) == len(y)
        rows = [np.flatnonzero((views == row).all(axis=2).any(axis=0))[0] for row in x]
        assert len(set(rows)) == len(rows)  # i0 (in rooms a and z) at most once
        for label in set(y.tolist()):
            assert (y == label).sum() >= 2  # every sampled room brings a positive pair


@pytest.mark.parametrize("loss", ["cross_category", "multi_similarity"])
def test_head_trains_on_training_items_and_embeds_everything(loss: str) -> None:
    settings = configured_section("style").train.model_copy(
        update=dict(
            epochs=2,
            steps_per_epoch=3,
            hidden_units=8,
            embedding_dim=4,
            rooms_per_batch=3,
            loss=loss,
        )
    )
    views = np.random.default_rng(1).normal(size=(1, 12, 6)).astype(np.float32)
    train = np.arange(12) % 4 != 0
    categories = np.array(["chair", "table", "rug"] * 4, dtype=object)
    head, history = train_head(views, IDS, ROOMS, train, settings, seed=0, categories=categories)
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    embedded = head.predict(views[0], verbose=0)
    assert embedded.shape == (12, 4)
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, rtol=1e-4)


def test_augmented_views_are_deterministic_crops_and_flips() -> None:
    pixels = np.zeros((3, 16, 16, 3), dtype=np.uint8)
    pixels[:, :, :8] = (200, 40, 40)  # left half red, right half black
    first = augmented_views(pixels, views=2, min_crop=0.75, seed=5)
    again = augmented_views(pixels, views=2, min_crop=0.75, seed=5)
    assert len(first) == 2 and first[0].shape == pixels.shape
    np.testing.assert_array_equal(first[1], again[1])
    colours = {tuple(c) for view in first for c in view.reshape(-1, 3).tolist()}
    assert (200, 40, 40) in colours and (0, 0, 0) in colours  # no colour jitter


def test_cross_category_loss_ignores_same_category_pairs() -> None:
    import tensorflow as tf

    from simrec.style.train import cross_category_loss

    loss = cross_category_loss(alpha=2.0, beta=40.0, lmda=0.5)
    # Rows: chair and table of room 0, chair and table of room 1 (labels: room, category).
    labels = tf.constant([[0, 0], [0, 1], [1, 0], [1, 1]])
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    matched = tf.constant([e1, e1, e2, e2])  # each room's pair together, rooms apart
    swapped = tf.constant([e1, e2, e2, e1])  # each chair next to the other room's table
    assert float(loss(labels, matched)) < float(loss(labels, swapped))
    # Both chairs on one point: as negatives of each other they would add e^20-sized terms;
    # the loss must equal the formula over the cross-category pairs alone.
    u, v, w = np.array([1.0, 0.0]), np.array([0.6, 0.8]), np.array([0.8, -0.6])
    embeddings = np.stack([u, v, u, w]).astype(np.float32)
    positive = {0: [1], 1: [0], 2: [3], 3: [2]}
    negative = {0: [3], 1: [2], 2: [1], 3: [0]}
    sims = embeddings @ embeddings.T
    expected = np.mean(
        [
            np.log1p(np.exp(-2 * (sims[i, positive[i]] - 0.5)).sum()) / 2
            + np.log1p(np.exp(40 * (sims[i, negative[i]] - 0.5)).sum()) / 40
            for i in range(4)
        ]
    )
    np.testing.assert_allclose(float(loss(labels, tf.constant(embeddings))), expected, rtol=1e-5)
