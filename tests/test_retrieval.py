"""Retrieval metrics on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from simrec.evaluation.retrieval import (
    average_precision_at_r,
    exact_neighbours,
    recall_at_k,
    retrieval_report,
    top_k,
)


def test_recall_at_k() -> None:
    queries = np.array([0, 1, 2])
    retrieved = np.array([[0, 1], [0, 1], [0, 1]])
    assert recall_at_k(queries, retrieved, 1) == pytest.approx(1 / 3)
    assert recall_at_k(queries, retrieved, 2) == pytest.approx(2 / 3)


def test_average_precision_at_r_matches_the_definition() -> None:
    # R = 3 relevant items; hits at ranks 1 and 3 → (1/1 + 2/3) / 3.
    ap = average_precision_at_r(np.array([5]), np.array([[5, 0, 5, 5]]), np.array([3]))
    assert ap[0] == pytest.approx((1 + 2 / 3) / 3)
    perfect = average_precision_at_r(np.array([1]), np.array([[1, 1, 0]]), np.array([2]))
    assert perfect[0] == pytest.approx(1.0)


def test_exact_neighbours_can_skip_the_query_itself() -> None:
    points = np.array([[0.0], [1.0], [3.0], [7.0]], dtype=np.float32)
    assert exact_neighbours(points, points, 1, "l2").ravel().tolist() == [0, 1, 2, 3]
    assert exact_neighbours(points, points, 1, "l2", exclude_self=True).ravel().tolist() == [
        1,
        0,
        1,
        2,
    ]


def test_report_on_separable_clusters_is_perfect_and_chunking_changes_nothing() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    centres = np.eye(4, 8, dtype=np.float32) * 10
    vectors = centres[labels] + rng.normal(scale=0.1, size=(120, 8)).astype(np.float32)
    whole = retrieval_report(vectors, labels, vectors, labels, [1, 5], "l2", exclude_self=True)
    chunked = retrieval_report(
        vectors, labels, vectors, labels, [1, 5], "l2", exclude_self=True, query_chunk=7
    )
    assert whole == pytest.approx({"recall_at_1": 1.0, "recall_at_5": 1.0, "map_at_r": 1.0})
    assert chunked == pytest.approx(whole)
    shuffled = rng.permutation(labels)
    random_report = retrieval_report(
        vectors, shuffled, vectors, shuffled, [1], "l2", exclude_self=True
    )
    assert random_report["map_at_r"] < 0.5


def test_deep_top_k_keeps_each_rows_largest_scores_in_order() -> None:
    # MAP@R's depth (a class's size) takes the sampled-threshold path; a row whose sampled
    # columns hold its only large scores defeats the estimate and is ranked in full.
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(6, 4000)).astype(np.float32)
    scores[1] = np.round(scores[1], 1)  # many ties
    scores[2] = -10.0 - rng.random(4000)
    scores[2, ::8] = 10.0 + rng.random(500)  # 500 high scores, all sampled: fewer than k
    scores[3, ::5] = -np.inf
    k = 600
    found = top_k(scores, k)
    for row in range(len(scores)):
        expected = np.sort(scores[row])[::-1][:k]
        assert np.array_equal(scores[row, found[row]], expected)
        assert len(set(found[row].tolist())) == k
    assert np.array_equal(top_k(scores, 3), np.argsort(-scores, axis=1, kind="stable")[:, :3])
    # Rows ranked in parallel blocks give the very same indices, ties and all, in row order.
    assert np.array_equal(top_k(scores, k, threads=2), found)
    assert np.array_equal(top_k(scores, k, threads=3), found)  # 3 blocks of the 6 rows
