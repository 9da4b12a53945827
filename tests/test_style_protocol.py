"""The held-out protocol cannot leak: no held-out item is fitted on, chosen with, or reached as
a room member of the training signal. An oracle block that memorises the room labels of the
rows it is fitted on would score near 1 on any item it was fitted on, near random otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from simrec.config import load_settings
from simrec.style.catalog import item_folds
from simrec.style.featurizers import Block, ColourBlock
from simrec.style.protocol import Split, co_occurrence, first_relevant_rank, validation_splits
from simrec.style.select import Rows, run_protocol, two_hop_scores

FOLDS = 5


def _catalog(rooms_count: int = 120, seed: int = 0):
    """Synthetic rooms of one chair and one table each (plus a few shared items)."""
    rng = np.random.default_rng(seed)
    ids, categories, rooms = [], [], {}
    for room in range(rooms_count):
        for category in ("chair", "table"):
            item = f"{category}-{room}"
            ids.append(item)
            categories.append(category)
            rooms[item] = frozenset({f"room-{room}"})
    order = np.argsort(ids)
    ids = np.asarray(ids, dtype=object)[order]
    categories = np.asarray(categories, dtype=object)[order]
    pixels = rng.integers(0, 256, (len(ids), 4, 4, 3), dtype=np.uint8)
    return ids, categories, rooms, pixels


class RoomOracle(Block):
    """Raw = (row id, one-hot rooms); `fit` memorises which rows it is given; a row it was not
    fitted on gets a zero vector (it knows nothing of that item)."""

    kind = "oracle"

    def raw(self, pixels, texts):  # pragma: no cover - raws are given directly
        raise NotImplementedError

    def fit(self, raw):
        self.seen = set(np.asarray(raw)[:, 0].astype(int).tolist())  # column 0: the row's id
        return self

    def transform(self, raw):
        raw = np.asarray(raw, dtype=np.float32)
        known = np.isin(raw[:, 0].astype(int), list(self.seen))
        out = np.where(known[:, None], raw[:, 1:], 0.0).astype(np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


def _rows(style):
    ids, categories, rooms, pixels = _catalog()
    names = sorted({room for item in rooms.values() for room in item})
    onehot = np.array([[room in rooms[item] for room in names] for item in ids], np.float32)
    onehot = np.concatenate([np.arange(len(ids))[:, None], onehot], axis=1).astype(np.float32)
    return Rows(
        ids=ids,
        categories=categories,
        together=co_occurrence(ids, rooms),
        folds=item_folds(ids, FOLDS),
        raws={
            "oracle": onehot,
            "colour": ColourBlock("colour", style.select.blocks["colour"], style).raw(pixels, None),
        },
        blocks={
            "oracle": RoomOracle("oracle", style.select.blocks["colour"], style),
            "colour": ColourBlock("colour", style.select.blocks["colour"], style),
        },
    )


@pytest.fixture
def style():
    settings = load_settings(
        overrides={
            "style.train.folds": FOLDS,
            "style.select.candidates": [["colour"], ["oracle"]],
            "style.select.weight_grid": [1.0],
            "style.select.bootstrap": 0,
            "style.select.two_hop_rooms": 0,
            "style.hit_at": [1, 5],
        }
    )
    return settings.style


def test_splits_keep_the_test_fold_out_of_fitting_selection_and_the_pool() -> None:
    folds = item_folds([f"item-{i}" for i in range(500)], FOLDS)
    scored = np.zeros(len(folds), int)
    for test_fold in range(FOLDS):
        test = folds == test_fold
        inner, outer = validation_splits(folds, test_fold, FOLDS)
        for mask in (inner.fit, inner.queries, inner.pool, outer.fit):
            assert not (mask & test).any()
        assert not (inner.fit & inner.queries).any()
        assert (outer.queries == test).all()
        scored += outer.queries
    assert (scored == 1).all()  # cross-fitted: every item scored once, held out


def test_an_oracle_of_room_labels_stays_at_chance_on_held_out_items(style) -> None:
    protocol = run_protocol(_rows(style), style, ["chair:table", "table:chair"])
    for pair in ("chair:table", "table:chair"):
        oracle = protocol.heldout["oracle"][pair]
        assert len(oracle.rows) == 120  # every chair (table) is scored, once
        # Fitted on a held-out item it would find its table at rank 1 every time.
        assert oracle.hit_ratio(1) < 0.1
    # On validation (its own fitting rows excluded too) the oracle is no better than colour.
    for fold in protocol.folds:
        scores = {c["candidate"]: c["validation_hr"] for c in fold["candidates"]}
        assert scores["oracle"] < 0.2


def test_two_hop_never_reaches_held_out_items_or_the_querys_own_rooms() -> None:
    # Items 0 (query), 1, 2 (training), 3 (held out); rooms: A = {0, 1}, B = {2, 3}.
    members = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
    vectors = np.eye(4, dtype=np.float32)
    rooms = np.ones((2, 4), dtype=np.float32) / 2.0  # each room photo resembles everything
    split = Split(
        fit=np.array([False, True, True, False]),
        queries=np.array([True, False, False, False]),
        pool=np.ones(4, bool),
        label="test",
    )
    scores = two_hop_scores(vectors, rooms, members, split, neighbours=2, weight=1.0)
    got = scores(np.array([0]), np.array([1, 2, 3]))[0]
    assert got[0] == 0.0  # item 1 is reachable only through room A, the query's own room
    assert got[1] > 0.0  # item 2 (training, room B) is reached
    assert got[2] == 0.0  # item 3 is held out: never a room member of the signal


def test_weighted_block_similarities_rank_like_the_combined_vectors() -> None:
    from simrec.style.featurizers import combine
    from simrec.style.protocol import cosine_scores
    from simrec.style.select import gram_matrix, weighted_scores

    rng = np.random.default_rng(1)
    parts = [rng.normal(size=(30, dim)).astype(np.float32) for dim in (5, 8)]
    parts = [part / np.linalg.norm(part, axis=1, keepdims=True) for part in parts]
    parts[1][3] = 0.0  # an item without evidence in the second block (no text)
    rows, pool = np.arange(6), np.arange(6, 30)
    for weights in ((1.0, 0.25), (1.0, 4.0)):
        fast = weighted_scores(
            [gram_matrix(p) for p in parts], [(p * p).sum(1) for p in parts], weights
        )(rows, pool)
        slow = cosine_scores(combine(parts, list(weights)))(rows, pool)
        np.testing.assert_array_equal(np.argsort(-fast, axis=1), np.argsort(-slow, axis=1))


def test_pair_blocks_score_exactly_as_the_full_similarity_matrices() -> None:
    """The protocol gathers each pair's (queries × pool) blocks once per split; every
    weighting must then give exactly the hits `score_pair` gives on the full matrices."""
    from simrec.style.protocol import pair_queries, score_pair
    from simrec.style.select import gram_matrix, pair_blocks, weighted_outcomes, weighted_scores

    rng = np.random.default_rng(2)
    count = 60
    parts = [rng.normal(size=(count, dim)).astype(np.float32) for dim in (4, 6)]
    parts = [part / np.linalg.norm(part, axis=1, keepdims=True) for part in parts]
    parts[1][5] = 0.0
    categories = np.array(["chair", "table", "sofa"])[np.arange(count) % 3]
    together = rng.random((count, count)) < 0.2
    together = together | together.T
    np.fill_diagonal(together, False)
    split = Split(
        fit=np.arange(count) % 4 != 0,
        queries=np.arange(count) % 4 == 0,
        pool=np.ones(count, bool),
        label="test",
    )
    sims = [(gram_matrix(p), (p * p).sum(1)) for p in parts]
    pairs = ["chair:table", "table:sofa", "sofa:chair"]
    gathered = pair_blocks(sims, [pair_queries(categories, together, p, split) for p in pairs])
    for weights in ((1.0, 0.25), (1.0, 4.0)):
        scores = weighted_scores([s for s, _ in sims], [q for _, q in sims], weights)
        slow = [score_pair(scores, categories, together, p, split, [1, 5]) for p in pairs]
        fast = weighted_outcomes(gathered, weights, [1, 5])
        for a, b in zip(fast, slow, strict=True):
            assert np.array_equal(a.rows, b.rows) and a.pool_size == b.pool_size
            for n in (1, 5):
                assert np.array_equal(a.hits[n], b.hits[n])


@pytest.mark.parametrize("tied", [False, True])
def test_hit_ratio_ranks_as_a_stable_sort_of_the_scores(tied):
    """HR@n from `first_relevant_rank` equals HR@n read off a stable sort of the whole row,
    ties (many, when `tied`) in index order, NaN last, rows with nothing relevant never hit."""
    rng = np.random.default_rng(int(tied))
    for _ in range(200):
        shape = (int(rng.integers(1, 12)), int(rng.integers(1, 40)))
        scores = rng.integers(0, 4, shape).astype(float) if tied else rng.normal(size=shape)
        scores[rng.random(shape) < 0.05] = np.nan
        relevant = rng.random(shape) < rng.random()
        order = np.argsort(-scores, axis=1, kind="stable")
        ranked = np.take_along_axis(relevant, order, axis=1)
        rank = first_relevant_rank(scores, relevant)
        for n in (1, 2, 5, 10, 100):
            assert ((rank < n) == ranked[:, :n].any(axis=1)).all()
