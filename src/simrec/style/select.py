"""Choosing the style featurizer on held-out rooms, and the held-out figures it is judged by.

Every candidate (a block, or blocks weighted together) is scored by the nested cross-fit of
`protocol`: learned parts and combination weights fitted on training folds, the winner chosen
by validation HR@`select_at` (averaged over every pair the catalog supports), figures on the test
folds. The colour histogram is one candidate, so "never worse than colour" is a real contest.
Two-hop retrieval (held-out item → nearest room photos, its own rooms excluded → the training
items in them) is tried on top of the chosen featurizer the same way, and reported.

The deployed bundle is chosen by plain cross-validation over every fold and refitted on every
item; the held-out figures describe that procedure (each test fold chose and fitted without
it). Both tables go to MLflow: the choice as params, the tables as JSON artifacts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
from scipy import sparse

from simrec.config import Settings, StyleSettings
from simrec.images import decode_batch
from simrec.lake.tables import Lakehouse
from simrec.style.build import BUNDLE_TAG, CHOICE_PARAM, catalog_to_fit, log_bundle
from simrec.style.bundle import StyleBundle, StyleEncoder
from simrec.style.catalog import StyleCatalog, item_folds, split_rule
from simrec.style.featurizers import Block, CombinedFeaturizer, combine, make_block
from simrec.style.indexes import CategoryIndexes
from simrec.style.protocol import (
    PairOutcome,
    PairQueries,
    Scores,
    Split,
    catalog_pairs,
    co_occurrence,
    merge,
    pair_queries,
    pooled_hit_ratio,
    score_pair,
    selection_splits,
    validation_splits,
    weight_options,
)
from simrec.tracking import setup_mlflow, tracked_step

log = logging.getLogger(__name__)

VALIDATION_FILE = "style_validation.json"
HELDOUT_FILE = "style_heldout.json"
COLOUR = "colour"  # the baseline block's name in style.select.blocks
KIND = "selected"


# ---------------------------------------------------------------- inputs


@dataclass
class Rows:
    """Everything the protocol reads, in catalog row order."""

    ids: np.ndarray
    categories: np.ndarray
    together: np.ndarray  # (N, N) share-a-room
    folds: np.ndarray
    raws: dict[str, np.ndarray]  # block name → raw features of every item
    room_raws: dict[str, np.ndarray] = field(default_factory=dict)  # of room photos
    room_members: np.ndarray | None = None  # (R, N) bool: item in room photo
    blocks: dict[str, Block] = field(default_factory=dict)
    memo: dict[tuple[str, str], tuple] = field(default_factory=dict)
    # (N, N) similarities and squared norms of each block fitted on one fit mask (only the
    # latest mask's are kept: 20 MB a block), and each split's pairs (`pair_queries`).
    sims: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    sims_fit: str | None = None
    pair_memo: dict[tuple[str, str], PairQueries] = field(default_factory=dict)


def _cache_key(style: StyleSettings, name: str, catalog: StyleCatalog, what: str) -> str:
    text = json.dumps(
        {
            "block": style.select.blocks[name].model_dump(mode="json"),
            "size": style.image_size,
            "bins": style.colour_bins,
            "threshold": style.background_threshold,
            "pca": style.pca_dims,
            "power": style.gram_power,
            "items": hashlib.sha256("".join(catalog.sha256).encode()).hexdigest(),
            "what": what,
        },
        sort_keys=True,
    )
    return f"{name}-{what}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz"


def cached_raw(
    block: Block, style: StyleSettings, catalog: StyleCatalog, what: str, compute
) -> np.ndarray:
    """A block's raw features, from `style.select.cache_dir` when computed before."""
    folder = style.select.cache_dir
    path = Path(folder) / _cache_key(style, block.name, catalog, what) if folder else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=block.kind == "text") as stored:
            return stored["raw"]
    started = time.perf_counter()
    raw = compute()
    log.info("%s features of %s: %.0f s", block.name, what, time.perf_counter() - started)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, raw=raw)
    return raw


def room_photos(lake: Lakehouse, settings: Settings, size: int) -> tuple[list[str], np.ndarray]:
    table = lake.read(settings.lake.rooms_table, columns=["id", "image", "has_image"]).to_pydict()
    keep = [p for p, has in enumerate(table["has_image"]) if has and table["image"][p]]
    ids = [table["id"][p] for p in keep]
    return ids, decode_batch([table["image"][p] for p in keep], size, 3)


def gather_rows(
    settings: Settings, lake: Lakehouse, catalog: StyleCatalog, names: list[str]
) -> Rows:
    style = settings.style
    pixels = catalog.pixels(style.image_size)
    blocks = {name: make_block(name, style) for name in names}
    raws = {
        name: cached_raw(
            block, style, catalog, "items", lambda b=block: b.raw(pixels, catalog.texts)
        )
        for name, block in blocks.items()
    }
    rows = Rows(
        ids=catalog.ids,
        categories=catalog.categories,
        together=co_occurrence(catalog.ids, catalog.rooms),
        folds=item_folds(catalog.ids, style.train.folds),
        raws=raws,
        blocks=blocks,
    )
    if style.select.two_hop_rooms:
        room_ids, room_pixels = room_photos(lake, settings, style.image_size)
        rows.room_raws = {
            name: cached_raw(
                block, style, catalog, "rooms", lambda b=block: b.raw(room_pixels, None)
            )
            for name, block in blocks.items()
        }
        column = {item: row for row, item in enumerate(catalog.ids)}
        members = np.zeros((len(room_ids), len(catalog)), dtype=bool)
        index = {room: r for r, room in enumerate(room_ids)}
        for item, item_rooms in catalog.rooms.items():
            for room in item_rooms:
                if room in index and item in column:
                    members[index[room], column[item]] = True
        rows.room_members = members
    return rows


# ---------------------------------------------------------------- scoring candidates


SPARSE_BELOW = 0.05  # share of non-zero entries under which a block is multiplied as sparse
MEMO_KINDS = ("gram", "pooled")  # costly fits (PCA) on small outputs: memoised per fit mask


def fitted_block(rows: Rows, name: str, fit: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """A block fitted on the `fit` rows only, applied to every item (and room photo)."""
    key = (name, hashlib.sha256(np.packbits(fit).tobytes()).hexdigest())
    if key in rows.memo:
        return rows.memo[key]
    block = rows.blocks[name].fit(rows.raws[name][fit])
    items = block.transform(rows.raws[name])
    photos = block.transform(rows.room_raws[name]) if name in rows.room_raws else None
    if block.kind in MEMO_KINDS:
        rows.memo[key] = (items, photos)
    return items, photos


def _mask_key(*masks: np.ndarray) -> str:
    return hashlib.sha256(b"".join(np.packbits(mask).tobytes() for mask in masks)).hexdigest()


def block_similarity(rows: Rows, name: str, fit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block `name` fitted on the `fit` rows: its (N, N) similarities and squared row norms,
    computed once per block and fit mask whatever the candidates that contain it."""
    key = _mask_key(fit)
    if rows.sims_fit != key:
        rows.sims.clear()
        rows.sims_fit = key
    if name not in rows.sims:
        items, _ = fitted_block(rows, name, fit)
        rows.sims[name] = (gram_matrix(items), (items * items).sum(axis=1))
    return rows.sims[name]


def split_pairs(rows: Rows, split: Split, pairs: list[str]) -> list[PairQueries]:
    """Each pair's queries, pool and relevance on `split`, computed once per split."""
    key = _mask_key(split.queries, split.pool)
    found = []
    for pair in pairs:
        if (key, pair) not in rows.pair_memo:
            rows.pair_memo[key, pair] = pair_queries(rows.categories, rows.together, pair, split)
        found.append(rows.pair_memo[key, pair])
    return found


def pair_blocks(
    similarities: list[tuple[np.ndarray, np.ndarray]], queries: list[PairQueries]
) -> list[tuple[PairQueries, list[np.ndarray], list[np.ndarray]]]:
    """Each pair's (queries × pool) block of every block similarity, and the pool's squared
    norms: gathered once, then every weighting of them is a small weighted sum."""
    return [
        (
            pair,
            [sim[np.ix_(pair.rows, pair.pool)] for sim, _ in similarities],
            [squares[pair.pool] for _, squares in similarities],
        )
        for pair in queries
    ]


def weighted_outcomes(
    blocks: list[tuple[PairQueries, list[np.ndarray], list[np.ndarray]]],
    weights: tuple[float, ...],
    hit_at: list[int],
) -> list[PairOutcome]:
    """`weighted_scores` on each pair's (queries × pool) block only: the same figures."""
    outcomes = []
    for pair, sims, squares in blocks:
        scores = None
        if len(pair.rows):
            total = sum(w * sim for w, sim in zip(weights, sims, strict=True))
            norm = np.sqrt(
                np.maximum(sum(w * sq for w, sq in zip(weights, squares, strict=True)), 1e-12)
            )
            scores = total / norm
        outcomes.append(pair.outcome(scores, hit_at))
    return outcomes


def fitted_parts(rows: Rows, names: list[str], fit: np.ndarray, rooms: bool = False):
    """Each block fitted on the `fit` rows only, then applied to every item (and room photo)."""
    parts = [fitted_block(rows, name, fit) for name in names]
    return [items for items, _ in parts], [photos for _, photos in parts] if rooms else []


def two_hop_scores(
    vectors: np.ndarray,
    room_vectors: np.ndarray,
    members: np.ndarray,
    split: Split,
    neighbours: int,
    weight: float,
):
    """Direct cosine + `weight` × mean over the query's `neighbours` most similar room photos
    (rooms the query itself is in excluded: its own labels stay unread) of their similarity,
    credited to the training (`split.fit`) items each room holds."""
    signal = members & split.fit[None, :]  # held-out items are never room members here

    def scores(query_rows: np.ndarray, pool_rows: np.ndarray) -> np.ndarray:
        direct = vectors[query_rows] @ vectors[pool_rows].T
        if weight == 0 or not len(room_vectors):
            return direct
        similarity = vectors[query_rows] @ room_vectors.T  # (Q, R)
        similarity[members[:, query_rows].T] = -np.inf  # the query's own rooms
        count = min(neighbours, similarity.shape[1])
        nearest = np.argsort(-similarity, axis=1)[:, :count]
        # Each query's nearest rooms' similarities (others 0), times what each room credits.
        chosen = np.zeros_like(similarity)
        picked = np.arange(len(query_rows))[:, None], nearest
        chosen[picked] = np.maximum(similarity[picked], 0.0)
        credit = chosen @ signal[:, pool_rows].astype(np.float32) / count
        return direct + weight * credit

    return scores


def evaluate_split(rows: Rows, scores, split: Split, pairs: list[str], hit_at: list[int]):
    return [score_pair(scores, rows.categories, rows.together, p, split, hit_at) for p in pairs]


@dataclass
class Choice:
    """A candidate with its chosen weights (and two-hop weight) and its validation HR."""

    blocks: list[str]
    weights: tuple[float, ...]
    validation_hr: float
    two_hop: float = 0.0

    @property
    def name(self) -> str:
        return "+".join(self.blocks)

    def as_dict(self) -> dict:
        return {
            "candidate": self.name,
            "weights": list(self.weights),
            "two_hop_weight": self.two_hop,
            "validation_hr": self.validation_hr,
        }


def gram_matrix(vectors: np.ndarray) -> np.ndarray:
    """(N, N) inner products; sparse rows (TF-IDF) multiplied as sparse."""
    if np.count_nonzero(vectors) < SPARSE_BELOW * vectors.size:
        matrix = sparse.csr_matrix(vectors)
        return np.asarray((matrix @ matrix.T).toarray(), dtype=np.float32)
    return vectors @ vectors.T


def weighted_scores(sims: list[np.ndarray], squares: list[np.ndarray], weights) -> Scores:
    """Scores ranking like the cosine of `combine(parts, weights)`, from each block's (N, N)
    similarities and squared row norms (the query's own norm does not change its ranking)."""
    total = sum(w * sim for w, sim in zip(weights, sims, strict=True))
    norm = np.sqrt(np.maximum(sum(w * sq for w, sq in zip(weights, squares, strict=True)), 1e-12))
    return lambda query_rows, pool_rows: total[np.ix_(query_rows, pool_rows)] / norm[pool_rows]


def _weight_outcomes(
    rows: Rows, blocks: list[str], split: Split, pairs: list[str], style: StyleSettings
) -> dict[tuple[float, ...], list[PairOutcome]]:
    """Validation outcomes of every grid weighting of `blocks` on one split (fitted on its
    training rows). cos(combine(q), combine(p)) = Σ wᵢ sᵢ(q, p) / (‖q‖ ‖p‖), ‖p‖² = Σ wᵢ ‖pᵢ‖²:
    the block similarities are computed once, each weighting is then a weighted sum."""
    select = style.select
    similarities = [block_similarity(rows, name, split.fit) for name in blocks]
    gathered = pair_blocks(similarities, split_pairs(rows, split, pairs))
    return {
        weights: weighted_outcomes(gathered, weights, [select.select_at])
        for weights in weight_options(len(blocks), select.weight_grid)
    }


def _best_weights(blocks: list[str], hits: dict, at: int) -> Choice:
    scored = {weights: pooled_hit_ratio(outcomes, at) for weights, outcomes in hits.items()}
    best = max(scored, key=lambda weights: (scored[weights], -sum(weights)))
    return Choice(list(blocks), best, scored[best])


def choose_all(
    rows: Rows,
    candidates: list[list[str]],
    splits: list[Split],
    pairs: list[str],
    style: StyleSettings,
) -> list[Choice]:
    """Per candidate (a list of blocks), the grid weights with the best validation HR (mean
    over pairs) over `splits`, fitted on each split's training rows; split by split, so each
    split's block similarities serve every candidate that contains the block."""
    hits: list[dict[tuple[float, ...], list[PairOutcome]]] = [{} for _ in candidates]
    for split in splits:
        for found, blocks in zip(hits, candidates, strict=True):
            for weights, outcomes in _weight_outcomes(rows, blocks, split, pairs, style).items():
                found.setdefault(weights, []).extend(outcomes)
    at = style.select.select_at
    chosen = zip(candidates, hits, strict=True)
    return [_best_weights(blocks, found, at) for blocks, found in chosen]


def choose_two_hop(
    rows: Rows, choice: Choice, splits: list[Split], pairs: list[str], style: StyleSettings
) -> Choice:
    select = style.select
    at = select.select_at
    outcomes: dict[float, list[PairOutcome]] = {weight: [] for weight in select.two_hop_weights}
    for split in splits:
        parts, photos = fitted_parts(rows, choice.blocks, split.fit, rooms=True)
        vectors = combine(parts, list(choice.weights))
        rooms = combine(photos, list(choice.weights))
        for weight in select.two_hop_weights:
            scores = two_hop_scores(
                vectors, rooms, rows.room_members, split, select.two_hop_rooms, weight
            )
            outcomes[weight].extend(evaluate_split(rows, scores, split, pairs, [at]))
    scored = {weight: pooled_hit_ratio(found, at) for weight, found in outcomes.items()}
    best = max(scored, key=lambda weight: (scored[weight], -weight))
    return Choice(choice.blocks, choice.weights, scored[best], best)


def test_outcomes(
    rows: Rows, choice: Choice, split: Split, pairs: list[str], style: StyleSettings
) -> list[PairOutcome]:
    if choice.two_hop > 0:
        parts, photos = fitted_parts(rows, choice.blocks, split.fit, rooms=True)
        vectors = combine(parts, list(choice.weights))
        rooms = combine(photos, list(choice.weights))
        scores = two_hop_scores(
            vectors, rooms, rows.room_members, split, style.select.two_hop_rooms, choice.two_hop
        )
        return evaluate_split(rows, scores, split, pairs, style.hit_at)
    similarities = [block_similarity(rows, name, split.fit) for name in choice.blocks]
    gathered = pair_blocks(similarities, split_pairs(rows, split, pairs))
    return weighted_outcomes(gathered, choice.weights, style.hit_at)


# ---------------------------------------------------------------- the protocol


@dataclass
class Protocol:
    pairs: list[str]
    selection: list[Choice]  # per candidate, cross-validated over every fold (deployment)
    winner: Choice
    folds: list[dict]  # per outer test fold: the validation table and what it chose
    heldout: dict[str, dict[str, PairOutcome]]  # "selected" / candidate / "+two_hop" → pair
    splits: list[tuple[Split, Split]]  # (validation, test) per outer fold, for audits


def run_protocol(rows: Rows, style: StyleSettings, pairs: list[str]) -> Protocol:
    count = style.train.folds
    candidates = [list(candidate) for candidate in style.select.candidates]
    if [COLOUR] not in candidates:  # the baseline is always in the contest (and the figures)
        candidates.insert(0, [COLOUR])
    per_fold: dict[str, list[list[PairOutcome]]] = {}
    folds_report, splits = [], []
    for test_fold in range(count):
        inner, outer = validation_splits(rows.folds, test_fold, count)
        splits.append((inner, outer))
        choices = choose_all(rows, candidates, [inner], pairs, style)
        chosen = max(choices, key=lambda c: c.validation_hr)  # first of equals: simpler listed
        hop = (
            choose_two_hop(rows, chosen, [inner], pairs, style)
            if rows.room_members is not None
            else None
        )
        folds_report.append(
            {
                "test_fold": test_fold,
                "validation": inner.label,
                "candidates": [choice.as_dict() for choice in choices],
                "chosen": chosen.as_dict(),
                "two_hop": hop.as_dict() if hop else None,
            }
        )
        results = {"selected": test_outcomes(rows, chosen, outer, pairs, style)}
        for choice in choices:
            results[choice.name] = test_outcomes(rows, choice, outer, pairs, style)
        if hop is not None:
            results["selected+two_hop"] = test_outcomes(rows, hop, outer, pairs, style)
        for key, outcomes in results.items():
            per_fold.setdefault(key, []).append(outcomes)
        log.info("test fold %d: chose %s", test_fold, chosen.name)
    heldout = {
        key: {pair: merge([fold[i] for fold in folds]) for i, pair in enumerate(pairs)}
        for key, folds in per_fold.items()
    }
    deployment = selection_splits(rows.folds, count)
    selection = choose_all(rows, candidates, deployment, pairs, style)
    winner = max(selection, key=lambda choice: choice.validation_hr)
    return Protocol(pairs, selection, winner, folds_report, heldout, splits)


# ---------------------------------------------------------------- figures and reports


def pair_figures(outcome: PairOutcome, colour: PairOutcome, style: StyleSettings) -> dict:
    select = style.select
    figures: dict[str, object] = {"pair": outcome.pair, "queries": len(outcome.rows)}
    figures["pool"] = outcome.pool_size
    for n in style.hit_at:
        figures[f"hr_at_{n}"] = outcome.hit_ratio(n)
        figures[f"hr_at_{n}_interval"] = outcome.interval(
            n, select.bootstrap, select.confidence, select.seed
        )
        figures[f"colour_hr_at_{n}"] = colour.hit_ratio(n)
        figures[f"colour_hr_at_{n}_interval"] = colour.interval(
            n, select.bootstrap, select.confidence, select.seed
        )
        figures[f"random_hr_at_{n}"] = outcome.random(n)
    return figures


def heldout_report(protocol: Protocol, style: StyleSettings) -> dict:
    """Held-out figures per pair for the procedure ("selected") and every candidate."""
    colour = protocol.heldout[COLOUR]
    return {
        key: [pair_figures(by_pair[pair], colour[pair], style) for pair in protocol.pairs]
        for key, by_pair in protocol.heldout.items()
    }


def choice_reason(protocol: Protocol, style: StyleSettings) -> str:
    """Why the winner won, in one line: its cross-validated HR beside colour's and the next."""
    at = style.select.select_at
    ranked = sorted(protocol.selection, key=lambda choice: -choice.validation_hr)
    colour = next(choice for choice in protocol.selection if choice.name == COLOUR)
    runner_up = ranked[1] if len(ranked) > 1 else None
    text = (
        f"best cross-validated HR@{at} (mean over {len(protocol.pairs)} pairs): "
        f"{ranked[0].name} {ranked[0].validation_hr:.3f}, colour {colour.validation_hr:.3f}"
    )
    if runner_up is not None and runner_up.name != COLOUR:
        text += f", runner-up {runner_up.name} {runner_up.validation_hr:.3f}"
    return text


def validation_report(protocol: Protocol) -> dict:
    return {
        "rule": "winner = best cross-validated HR (averaged over pairs) over every fold",
        "candidates": [choice.as_dict() for choice in protocol.selection],
        "winner": protocol.winner.as_dict(),
        "nested_folds": protocol.folds,
    }


def table(figures: list[dict], hit_at: list[int]) -> str:
    head = f"{'pair':<16}{'q':>5}  " + "  ".join(
        f"{'HR@' + str(n) + ' model/colour/random':>24}" for n in hit_at
    )
    lines = [head]
    for row in figures:
        cells = "  ".join(
            f"{row[f'hr_at_{n}']:>8.3f}/{row[f'colour_hr_at_{n}']:.3f}/{row[f'random_hr_at_{n}']:.3f}"
            for n in hit_at
        )
        lines.append(f"{row['pair']:<16}{row['queries']:>5}  {cells}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the step


@dataclass
class StyleSelectResult:
    run_id: str | None
    folder: Path
    bundle: StyleBundle
    protocol: Protocol
    heldout: dict
    validation: dict
    seconds: float


def fit_winner(rows: Rows, catalog: StyleCatalog, choice: Choice, style: StyleSettings):
    """The winner refitted on every item, indexed by category."""
    blocks = [make_block(name, style) for name in choice.blocks]
    featurizer = CombinedFeaturizer(blocks, list(choice.weights), style)
    featurizer.fit([rows.raws[name] for name in choice.blocks])
    vectors = featurizer.from_raw([rows.raws[name] for name in choice.blocks])
    meta = {
        "kind": KIND,
        "featurizer": choice.name,
        "featurizer_weights": list(choice.weights),
        "items_table": catalog.items_table.as_dict(),
        "item_rooms_table": catalog.item_rooms_table.as_dict(),
        "weights_source": featurizer.weights_source,
        "image_size": style.image_size,
        "style_dim": int(vectors.shape[1]),
    }
    return StyleBundle(
        encoder=StyleEncoder(featurizer),
        indexes=CategoryIndexes.build(catalog.ids, catalog.categories, vectors, "cosine"),
        items=catalog.items_frame(),
        vectors=vectors,
        meta=meta,
    )


def select_style(
    settings: Settings,
    lake: Lakehouse,
    items_version: int | None = None,
    item_rooms_version: int | None = None,
    output_dir: Path | None = None,
    track: bool = True,
    catalog: StyleCatalog | None = None,
) -> StyleSelectResult:
    """Choose on held-out rooms, refit the winner on every item, bundle it (and log it with
    the validation and held-out tables); `catalog`: already read at the pinned versions."""
    started = time.perf_counter()
    style = settings.style
    if catalog is None:
        catalog = catalog_to_fit(settings, lake, items_version, item_rooms_version)
    names = sorted({name for candidate in style.select.candidates for name in candidate} | {COLOUR})
    rows = gather_rows(settings, lake, catalog, names)
    pairs = catalog_pairs(rows.categories, rows.together, style.min_queries)
    log.info("%d category pairs with ≥ %d eligible queries", len(pairs), style.min_queries)
    protocol = run_protocol(rows, style, pairs)
    heldout = heldout_report(protocol, style)
    validation = validation_report(protocol)
    bundle = fit_winner(rows, catalog, protocol.winner, style)
    bundle.meta["featurizer_choice"] = choice_reason(protocol, style)
    bundle.meta["protocol"] = {
        "rule": split_rule(style.train.folds, 0).split(";")[0] + "; nested cross-fit",
        "folds": style.train.folds,
        "pairs": pairs,
    }
    folder = bundle.save(Path(output_dir or tempfile.mkdtemp(prefix="simrec-style-select-")))
    seconds = time.perf_counter() - started
    log.info("chosen: %s (weights %s)", protocol.winner.name, list(protocol.winner.weights))
    log.info(
        "held out (nested cross-fit), the procedure vs colour:\n%s",
        table(heldout["selected"], style.hit_at),
    )
    run_id = None
    if track:
        setup_mlflow(settings.mlflow)
        with tracked_step("style_select", settings, run_name="style-select") as run:
            log_bundle(settings, bundle, catalog, folder)
            mlflow.set_tag(BUNDLE_TAG, KIND)
            mlflow.log_params(
                {
                    "style_featurizer": protocol.winner.name,
                    "style_featurizer_weights": json.dumps(list(protocol.winner.weights)),
                    "style_selection_rule": validation["rule"],
                    CHOICE_PARAM: bundle.meta["featurizer_choice"][:500],  # MLflow's param limit
                }
            )
            for key, figures in {"heldout": heldout["selected"], "colour": heldout[COLOUR]}.items():
                for row in figures:
                    name = row["pair"].replace(":", "_")
                    for n in style.hit_at:
                        mlflow.log_metric(f"{key}_{name}_hr_at_{n}", row[f"hr_at_{n}"])
            with tempfile.TemporaryDirectory() as tmp:
                for file, content in ((VALIDATION_FILE, validation), (HELDOUT_FILE, heldout)):
                    (Path(tmp) / file).write_text(json.dumps(content, indent=2))
                    mlflow.log_artifact(str(Path(tmp) / file))
            mlflow.log_metric("style_select_seconds", seconds)
            run_id = run.info.run_id
    return StyleSelectResult(run_id, folder, bundle, protocol, heldout, validation, seconds)


def heldout_figures(run_id: str) -> list[dict]:
    """The held-out figures of a `style select` run, per pair: the procedure's HR@n with
    bootstrap intervals beside colour's and random's, on the same queries and pool. What the
    promotion gate compares (`hr_at_10` vs `colour_hr_at_10` on every pair)."""
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=HELDOUT_FILE)
    return json.loads(Path(path).read_text())["selected"]


def never_worse_than_colour(figures: list[dict], at: int) -> bool:
    return all(row[f"hr_at_{at}"] >= row[f"colour_hr_at_{at}"] for row in figures)
