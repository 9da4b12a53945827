"""HR@n against room scenes, as pure functions, and the random-ranking expectation.

For a (source → target) category pair: the queries are the source items that share at least one
room with some item of the target pool; a query hits at n when one of its n nearest target items
shares a room with it. A random ranking of a pool of N items, m of them relevant, hits at n with
probability 1 − C(N−m, n) / C(N, n) (hypergeometric: no relevant item among n drawn).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import comb

import numpy as np


@dataclass
class PairHits:
    """Per-query outcomes for one pair: which queries hit at each n, and the random expectation."""

    pair: str
    query_ids: list[str]
    pool_size: int
    relevant_counts: np.ndarray  # (Q,) relevant pool items per query
    hits: dict[int, np.ndarray] = field(default_factory=dict)  # n -> (Q,) bool

    @property
    def queries(self) -> int:
        return len(self.query_ids)

    def hit_ratio(self) -> dict[int, float]:
        return {n: float(hit.mean()) if len(hit) else float("nan") for n, hit in self.hits.items()}

    def random_hit_ratio(self) -> dict[int, float]:
        return {
            n: expected_random_hit_ratio(self.relevant_counts, self.pool_size, n) for n in self.hits
        }


def parse_pair(pair: str) -> tuple[str, str]:
    source, sep, target = pair.partition(":")
    if not sep or not source or not target:
        raise ValueError(f"a pair looks like source:target (e.g. chair:table), got {pair!r}")
    return source.strip(), target.strip()


def relevance(
    query_ids: list[str], pool_ids: list[str], rooms: dict[str, frozenset[str]]
) -> np.ndarray:
    """(Q, P) bool: query i and pool item j appear together in at least one room."""
    empty: frozenset[str] = frozenset()
    return np.array(
        [[bool(rooms.get(q, empty) & rooms.get(p, empty)) for p in pool_ids] for q in query_ids],
        dtype=bool,
    ).reshape(len(query_ids), len(pool_ids))


def eligible_queries(
    source_ids: list[str], pool_ids: list[str], rooms: dict[str, frozenset[str]]
) -> list[str]:
    """Every source item sharing a room with at least one pool item (itself excluded)."""
    pool_rooms = {}
    for item_id in pool_ids:
        for room in rooms.get(item_id, ()):
            pool_rooms.setdefault(room, set()).add(item_id)
    return [
        item_id
        for item_id in source_ids
        if any(pool_rooms.get(room, set()) - {item_id} for room in rooms.get(item_id, ()))
    ]


def hits_from_ranking(ranked_relevance: np.ndarray, hit_at: list[int]) -> dict[int, np.ndarray]:
    """(Q, ≥max n) relevance of each query's ranked results → per-n hit flags."""
    return {n: ranked_relevance[:, :n].any(axis=1) for n in hit_at}


def rank_by_distance(
    query_vectors: np.ndarray, pool_vectors: np.ndarray, metric: str
) -> np.ndarray:
    """(Q, P) pool positions, nearest first (exact): `l2` Euclidean, `cosine` on directions."""
    queries = np.asarray(query_vectors, dtype=np.float64)
    pool = np.asarray(pool_vectors, dtype=np.float64)
    if metric == "cosine":
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        pool = pool / np.maximum(np.linalg.norm(pool, axis=1, keepdims=True), 1e-12)
        distances = -(queries @ pool.T)
    else:
        distances = (
            (queries**2).sum(axis=1)[:, None] - 2 * queries @ pool.T + (pool**2).sum(axis=1)[None]
        )
    return np.argsort(distances, axis=1, kind="stable")


def pair_hits(
    pair: str,
    query_ids: list[str],
    query_vectors: np.ndarray,
    pool_ids: list[str],
    pool_vectors: np.ndarray,
    rooms: dict[str, frozenset[str]],
    hit_at: list[int],
    metric: str = "l2",
) -> PairHits:
    """HR@n outcomes of `query_ids` (already the eligible queries) against the whole pool.

    A query that is itself in the pool (same-category pairs) is removed from its own ranking.
    """
    relevant = relevance(query_ids, pool_ids, rooms)
    pool_position = {item_id: position for position, item_id in enumerate(pool_ids)}
    own = [pool_position.get(q) for q in query_ids]
    for row, position in enumerate(own):
        if position is not None:
            relevant[row, position] = False  # an item does not "go with" itself
    order = rank_by_distance(query_vectors, pool_vectors, metric)
    ranked = np.take_along_axis(relevant, order, axis=1)
    if any(position is not None for position in own):
        keep = np.array(
            [[position != own[row] for position in order[row]] for row in range(len(query_ids))]
        )
        ranked = np.stack([ranked[row][keep[row]] for row in range(len(query_ids))])
    pool_size = len(pool_ids) - (1 if any(p is not None for p in own) else 0)
    return PairHits(
        pair=pair,
        query_ids=list(query_ids),
        pool_size=pool_size,
        relevant_counts=relevant.sum(axis=1),
        hits=hits_from_ranking(ranked, hit_at),
    )


def expected_random_hit_ratio(relevant_counts: np.ndarray, pool_size: int, n: int) -> float:
    """Mean over queries of P(at least one of m relevant items among n drawn from N)."""
    if len(relevant_counts) == 0:
        return float("nan")
    n = min(n, pool_size)
    total = comb(pool_size, n)
    return float(
        np.mean([1.0 - comb(pool_size - int(m), n) / total for m in np.asarray(relevant_counts)])
    )


def merge_hits(parts: list[PairHits]) -> PairHits:
    """Cross-fitted folds → one PairHits over all their queries (same pair and pool)."""
    if not parts:
        raise ValueError("nothing to merge")
    return PairHits(
        pair=parts[0].pair,
        query_ids=[q for part in parts for q in part.query_ids],
        pool_size=parts[0].pool_size,
        relevant_counts=np.concatenate([part.relevant_counts for part in parts]),
        hits={n: np.concatenate([part.hits[n] for part in parts]) for n in parts[0].hits},
    )
