"""The held-out protocol for choosing a featurizer, as pure numpy over catalog rows.

Items are split into item-disjoint folds by a hash of their id (`catalog.item_folds`).
Nested cross-fitting: for each test fold t, the validation fold is v = (t + 1) mod K; every
learned part (TF-IDF vocabulary, PCAs, centring, combination weights, the choice itself) is
fitted on the other K − 2 folds and chosen by validation HR on fold v, scored against a pool
without any fold-t item; then the chosen candidate is refitted on every fold but t and scored
on fold t's queries. Fold t's room labels are never read before that last step, and every
eligible query is scored exactly once, by a model blind to it.

`Split` records which rows each step may touch, so a test can check nothing leaks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import product

import numpy as np

from simrec.style.hit_ratio import expected_random_hit_ratio, parse_pair


@dataclass(frozen=True)
class Split:
    """Rows (catalog positions) a step may use: `fit` to learn from, `queries` to score, `pool`
    to rank. Room labels are read only between `queries` and `pool` rows."""

    fit: np.ndarray  # bool (N,)
    queries: np.ndarray  # bool (N,)
    pool: np.ndarray  # bool (N,)
    label: str


def co_occurrence(item_ids: np.ndarray, rooms: dict[str, frozenset[str]]) -> np.ndarray:
    """(N, N) bool: items i ≠ j appear together in at least one room scene."""
    names = sorted({room for item in item_ids for room in rooms.get(str(item), ())})
    column = {room: position for position, room in enumerate(names)}
    membership = np.zeros((len(item_ids), len(names)), dtype=np.float32)
    for row, item in enumerate(item_ids):
        for room in rooms.get(str(item), ()):
            membership[row, column[room]] = 1.0
    together = (membership @ membership.T) > 0
    np.fill_diagonal(together, False)
    return together


def eligible(categories: np.ndarray, together: np.ndarray, pair: str, split: Split) -> np.ndarray:
    """Row positions of the pair's eligible queries within `split`: source items among its
    queries sharing a room with at least one target item of its pool."""
    source, target = parse_pair(pair)
    pool = split.pool & (categories == target)
    candidates = np.flatnonzero(split.queries & (categories == source))
    return candidates[together[np.ix_(candidates, np.flatnonzero(pool))].any(axis=1)]


def catalog_pairs(categories: np.ndarray, together: np.ndarray, minimum: int) -> list[str]:
    """Every ordered pair of distinct categories with ≥ `minimum` eligible queries."""
    everything = np.ones(len(categories), bool)
    whole = Split(everything, everything, everything, "catalog")
    names = sorted(set(categories.tolist()))
    pairs = [f"{s}:{t}" for s in names for t in names if s != t]
    return [pair for pair in pairs if len(eligible(categories, together, pair, whole)) >= minimum]


@dataclass
class PairOutcome:
    """Per-query hits for one pair, with what the random expectation needs."""

    pair: str
    rows: np.ndarray  # query rows
    pool_size: int
    relevant: np.ndarray  # (Q,) relevant pool items per query
    hits: dict[int, np.ndarray] = field(default_factory=dict)  # n -> (Q,) bool

    def hit_ratio(self, n: int) -> float:
        return float(self.hits[n].mean()) if len(self.rows) else float("nan")

    def random(self, n: int) -> float:
        return expected_random_hit_ratio(self.relevant, self.pool_size, n)

    def interval(self, n: int, resamples: int, confidence: float, seed: int) -> tuple[float, float]:
        """Percentile bootstrap interval of HR@n over the queries."""
        if not len(self.rows) or resamples == 0:
            return (float("nan"), float("nan"))
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(self.rows), size=(resamples, len(self.rows)))
        means = self.hits[n][draws].mean(axis=1)
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(means, [tail, 100 - tail])
        return (float(low), float(high))


def merge(parts: list[PairOutcome]) -> PairOutcome:
    return PairOutcome(
        pair=parts[0].pair,
        rows=np.concatenate([part.rows for part in parts]),
        pool_size=parts[0].pool_size,
        relevant=np.concatenate([part.relevant for part in parts]),
        hits={n: np.concatenate([part.hits[n] for part in parts]) for n in parts[0].hits},
    )


Scores = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (query rows, pool rows) → (Q, P)


def score_pair(
    scores: Scores,
    categories: np.ndarray,
    together: np.ndarray,
    pair: str,
    split: Split,
    hit_at: list[int],
) -> PairOutcome:
    """HR@n of a scoring function (higher = better match) on one pair of a split."""
    queries = pair_queries(categories, together, pair, split)
    found = scores(queries.rows, queries.pool) if len(queries.rows) else None
    return queries.outcome(found, hit_at)


@dataclass(frozen=True)
class PairQueries:
    """One pair of a split: its eligible query rows, pool rows and which pool items are
    relevant to each query; what every scoring of that pair reads (computed once)."""

    pair: str
    rows: np.ndarray
    pool: np.ndarray
    relevant: np.ndarray  # (Q, P) bool

    def outcome(self, scores: np.ndarray | None, hit_at: list[int]) -> PairOutcome:
        """HR@n from the (Q, P) scores of these queries against this pool."""
        outcome = PairOutcome(self.pair, self.rows, len(self.pool), self.relevant.sum(axis=1))
        if not len(self.rows):
            outcome.hits = {n: np.zeros(0, bool) for n in hit_at}
            return outcome
        rank = first_relevant_rank(scores, self.relevant)
        outcome.hits = {n: rank < n for n in hit_at}
        return outcome


NONE_RELEVANT = np.iinfo(np.int64).max  # past any n


def first_relevant_rank(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """0-based rank of each row's best-ranked relevant item when the row is sorted by score,
    highest first, ties in index order (a stable sort of -scores; NaN ranks last), or
    `NONE_RELEVANT` for a row with no relevant item. HR@n is `rank < n`: no sort needed."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    masked = np.where(relevant, scores, -np.inf)
    best = masked.argmax(axis=1)  # the first of equal maxima: the stable order's first
    # Every relevant score -inf (or NaN): argmax may have landed on an irrelevant -inf.
    stray = ~np.take_along_axis(relevant, best[:, None], axis=1)[:, 0]
    best = np.where(stray, relevant.argmax(axis=1), best)
    best_score = np.take_along_axis(scores, best[:, None], axis=1)
    before = (scores > best_score) | (
        (scores == best_score) & (np.arange(scores.shape[1])[None, :] < best[:, None])
    )
    return np.where(relevant.any(axis=1), before.sum(axis=1), NONE_RELEVANT)


def pair_queries(
    categories: np.ndarray, together: np.ndarray, pair: str, split: Split
) -> PairQueries:
    _, target = parse_pair(pair)
    rows = eligible(categories, together, pair, split)
    pool = np.flatnonzero(split.pool & (categories == target))
    return PairQueries(pair, rows, pool, together[np.ix_(rows, pool)])


def cosine_scores(vectors: np.ndarray) -> Scores:
    return lambda rows, pool: vectors[rows] @ vectors[pool].T


def pooled_hit_ratio(outcomes: list[PairOutcome], n: int) -> float:
    """Mean over pairs of HR@n, each pair's queries pooled over the splits given: every pair
    counts the same, as in the goal "never worse than colour on any pair" (pooling queries
    instead would let the ~1,000-query `other` pairs decide alone)."""
    by_pair: dict[str, list[PairOutcome]] = {}
    for outcome in outcomes:
        by_pair.setdefault(outcome.pair, []).append(outcome)
    ratios = [
        sum(int(o.hits[n].sum()) for o in parts) / total
        for parts in by_pair.values()
        if (total := sum(len(o.rows) for o in parts))
    ]
    return float(np.mean(ratios)) if ratios else 0.0


def weight_options(blocks: int, grid: list[float]) -> Iterator[tuple[float, ...]]:
    """The first block weighs 1; each further block takes every grid value."""
    for rest in product(grid, repeat=blocks - 1):
        yield (1.0, *rest)


def validation_splits(folds: np.ndarray, test_fold: int, count: int) -> tuple[Split, Split]:
    """For outer test fold t: (validation split, refit-for-test split)."""
    validation = (test_fold + 1) % count
    not_test = folds != test_fold
    inner = Split(
        fit=not_test & (folds != validation),
        queries=folds == validation,
        pool=not_test,
        label=f"validation fold {validation} (test fold {test_fold} unseen)",
    )
    outer = Split(fit=not_test, queries=folds == test_fold, pool=np.ones_like(not_test),
                  label=f"test fold {test_fold}")  # fmt: skip
    return inner, outer


def selection_splits(folds: np.ndarray, count: int) -> list[Split]:
    """Plain cross-validation over every fold: how the deployed model is chosen."""
    everything = np.ones(len(folds), bool)
    return [
        Split(fit=folds != fold, queries=folds == fold, pool=everything, label=f"fold {fold}")
        for fold in range(count)
    ]
