"""HR@n on a hand-built miniature catalog whose answers are known, the random expectation,
and the deterministic item split."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from simrec.style.catalog import holdout_mask, item_folds, split_rule
from simrec.style.hit_ratio import (
    eligible_queries,
    expected_random_hit_ratio,
    merge_hits,
    pair_hits,
    parse_pair,
    relevance,
)

# Three chairs, four tables, on a line (1-d vectors). Rooms:
#   r1: chair c1 + table t3      r2: chair c2 + table t1      r3: chair c3 alone
#   r4: table t2 alone
ROOMS = {
    "c1": frozenset({"r1"}),
    "c2": frozenset({"r2"}),
    "c3": frozenset({"r3"}),
    "t1": frozenset({"r2"}),
    "t2": frozenset({"r4"}),
    "t3": frozenset({"r1"}),
}
CHAIRS = {"c1": 0.0, "c2": 10.0, "c3": 5.0}
TABLES = {"t1": 11.0, "t2": 1.0, "t3": 3.0, "t4": 20.0}


def _vectors(items: dict[str, float], ids: list[str]) -> np.ndarray:
    return np.array([[items[item]] for item in ids], dtype=np.float32)


def test_only_queries_sharing_a_room_with_the_pool_count() -> None:
    assert eligible_queries(list(CHAIRS), list(TABLES), ROOMS) == ["c1", "c2"]
    assert relevance(["c1", "c2"], list(TABLES), ROOMS).tolist() == [
        [False, False, True, False],
        [True, False, False, False],
    ]


def test_hit_ratio_on_the_miniature_catalog() -> None:
    queries = eligible_queries(list(CHAIRS), list(TABLES), ROOMS)
    pool = list(TABLES)
    hits = pair_hits(
        "chair:table",
        queries,
        _vectors(CHAIRS, queries),
        pool,
        _vectors(TABLES, pool),
        ROOMS,
        hit_at=[1, 2, 3],
    )
    # c1 at 0: t2 (1), t3 (3), t1 (11), t4 (20) → its partner t3 is 2nd.
    # c2 at 10: t1 (11), t3 (3), t2 (1), t4 → its partner t1 is 1st.
    assert hits.hits[1].tolist() == [False, True]
    assert hits.hit_ratio() == {1: 0.5, 2: 1.0, 3: 1.0}
    assert hits.relevant_counts.tolist() == [1, 1]
    # One relevant item in a pool of 4: a random ranking hits at n with probability n/4.
    assert hits.random_hit_ratio() == pytest.approx({1: 0.25, 2: 0.5, 3: 0.75})


def test_same_category_pairs_never_rank_the_query_itself() -> None:
    rooms = {"a": frozenset({"r"}), "b": frozenset({"r"}), "c": frozenset({"s"})}
    ids = ["a", "b", "c"]
    vectors = np.array([[0.0], [5.0], [1.0]], dtype=np.float32)
    hits = pair_hits("x:x", ["a", "b"], vectors[:2], ids, vectors, rooms, hit_at=[1])
    # Without itself, a's nearest is c (a miss); b's nearest is c too (a miss).
    assert hits.hits[1].tolist() == [False, False]
    assert hits.pool_size == 2 and hits.relevant_counts.tolist() == [1, 1]


def test_expected_random_hit_ratio_is_hypergeometric() -> None:
    counts = np.array([1, 3])
    expected = np.mean([1 - comb(117 - m, 5) / comb(117, 5) for m in counts])
    assert expected_random_hit_ratio(counts, 117, 5) == pytest.approx(expected)
    assert expected_random_hit_ratio(np.array([2]), 5, 4) == pytest.approx(1.0)  # 4 of 5 drawn
    assert expected_random_hit_ratio(np.array([1]), 3, 10) == 1.0  # n beyond the pool


def test_merged_folds_cover_every_query_once() -> None:
    pool = list(TABLES)
    parts = [
        pair_hits("p", [q], _vectors(CHAIRS, [q]), pool, _vectors(TABLES, pool), ROOMS, [1])
        for q in ("c1", "c2")
    ]
    merged = merge_hits(parts)
    assert merged.query_ids == ["c1", "c2"] and merged.hit_ratio() == {1: 0.5}


def test_pairs_are_parsed() -> None:
    assert parse_pair("chair:table") == ("chair", "table")
    with pytest.raises(ValueError):
        parse_pair("chair")


def test_item_split_is_deterministic_and_disjoint() -> None:
    ids = [f"{n:03d}.{n * 7 % 1000:03d}.{n % 97:02d}" for n in range(2000)]
    folds = item_folds(ids, 5)
    # Stable: the same ids give the same folds in any order, and an id's fold is its own.
    shuffled = list(reversed(ids))
    assert item_folds(shuffled, 5).tolist() == list(reversed(folds.tolist()))
    assert item_folds(ids[:10], 5).tolist() == folds[:10].tolist()
    # Disjoint and covering: every item is held out by exactly one of the folds.
    masks = np.stack([holdout_mask(ids, 5, fold) for fold in range(5)])
    assert (masks.sum(axis=0) == 1).all()
    shares = masks.mean(axis=1)
    assert np.all(np.abs(shares - 0.2) < 0.04), shares
    train, held = ~masks[0], masks[0]
    assert not set(np.array(ids)[train]) & set(np.array(ids)[held])
    assert "mod 5" in split_rule(5, 0) and "fold == 0" in split_rule(5, 0)
    with pytest.raises(ValueError):
        holdout_mask(ids, 5, 5)
