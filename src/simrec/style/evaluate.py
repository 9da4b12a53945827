"""The style evaluate step: HR@n per (source → target) pair against room scenes, beside the
random-ranking expectation and a colour-histogram baseline on the same queries and pool."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np

from simrec.config import Settings
from simrec.lake.tables import Lakehouse
from simrec.style.bundle import StyleBundle
from simrec.style.catalog import StyleCatalog, holdout_mask, read_style_catalog
from simrec.style.colour import colour_histograms
from simrec.style.hit_ratio import PairHits, eligible_queries, pair_hits, parse_pair
from simrec.style.runs import load_run_bundle
from simrec.tracking import setup_mlflow

REPORT_FILE = "style_evaluation.json"


@dataclass
class PairReport:
    pair: str
    queries: int
    pool: int
    model: dict[int, float]
    random: dict[int, float]
    colour: dict[int, float]
    judged: bool  # enough queries to compare with the baseline

    def beats_colour(self) -> bool:
        return all(self.model[n] > self.colour[n] for n in self.model)

    def as_dict(self) -> dict[str, object]:
        return {
            "pair": self.pair,
            "queries": self.queries,
            "pool": self.pool,
            **{f"hr_at_{n}": v for n, v in self.model.items()},
            **{f"random_hr_at_{n}": v for n, v in self.random.items()},
            **{f"colour_hr_at_{n}": v for n, v in self.colour.items()},
            "judged": self.judged,
        }


@dataclass
class StyleEvaluation:
    label: str  # what was evaluated, e.g. "gram (all queries)" or "learned (held-out)"
    pairs: list[PairReport] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"label": self.label, "pairs": [pair.as_dict() for pair in self.pairs]}

    def table(self) -> str:
        hit_at = list(self.pairs[0].model) if self.pairs else []
        header = f"{'pair':<16}{'queries':>8}{'pool':>6}  " + "  ".join(
            f"{'HR@' + str(n) + ' model/colour/random':>26}" for n in hit_at
        )
        lines = [self.label, header]
        for pair in self.pairs:
            cells = "  ".join(
                f"{pair.model[n]:>10.3f}/{pair.colour[n]:.3f}/{pair.random[n]:.3f}" for n in hit_at
            )
            flag = "" if pair.judged else "  (too few queries to judge)"
            lines.append(f"{pair.pair:<16}{pair.queries:>8}{pair.pool:>6}  {cells}{flag}")
        return "\n".join(lines)


def pair_queries(
    catalog: StyleCatalog, pair: str, query_mask: np.ndarray | None = None
) -> tuple[list[str], list[str]]:
    """(eligible query ids, pool ids) for a pair: every source item (or every one allowed by
    `query_mask`) sharing a room with some item of the whole target category."""
    source, target = parse_pair(pair)
    allowed = catalog.mask(source) if query_mask is None else catalog.mask(source) & query_mask
    pool_ids = [str(item) for item in catalog.ids[catalog.mask(target)]]
    sources = [str(item) for item in catalog.ids[allowed]]
    return eligible_queries(sources, pool_ids, catalog.rooms), pool_ids


def vectors_for(ids: list[str], catalog_ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    position = {str(item): row for row, item in enumerate(catalog_ids)}
    return vectors[[position[item] for item in ids]] if ids else vectors[:0]


def report_pair(model_hits: PairHits, colour_hits: PairHits, min_queries: int) -> PairReport:
    if model_hits.query_ids != colour_hits.query_ids:
        raise ValueError("model and baseline must be scored on the same queries")
    return PairReport(
        pair=model_hits.pair,
        queries=model_hits.queries,
        pool=model_hits.pool_size,
        model=model_hits.hit_ratio(),
        random=model_hits.random_hit_ratio(),
        colour=colour_hits.hit_ratio(),
        judged=model_hits.queries >= min_queries,
    )


def colour_pair_hits(
    catalog: StyleCatalog,
    histograms: np.ndarray,
    pair: str,
    query_ids: list[str],
    pool_ids: list[str],
    hit_at: list[int],
) -> PairHits:
    return pair_hits(
        pair,
        query_ids,
        vectors_for(query_ids, catalog.ids, histograms),
        pool_ids,
        vectors_for(pool_ids, catalog.ids, histograms),
        catalog.rooms,
        hit_at,
        metric="l2",
    )


def catalog_histograms(catalog: StyleCatalog, size: int, bins: int) -> np.ndarray:
    return colour_histograms(catalog.pixels(size), bins)


def evaluate_vectors(
    catalog: StyleCatalog,
    vectors: np.ndarray,
    pairs: list[str],
    hit_at: list[int],
    metric: str,
    histograms: np.ndarray,
    min_queries: int,
    label: str,
    query_mask: np.ndarray | None = None,
) -> StyleEvaluation:
    """HR@n of one set of item vectors (rows in catalog order) for each pair."""
    evaluation = StyleEvaluation(label)
    for pair in pairs:
        query_ids, pool_ids = pair_queries(catalog, pair, query_mask)
        model = pair_hits(
            pair,
            query_ids,
            vectors_for(query_ids, catalog.ids, vectors),
            pool_ids,
            vectors_for(pool_ids, catalog.ids, vectors),
            catalog.rooms,
            hit_at,
            metric,
        )
        colour = colour_pair_hits(catalog, histograms, pair, query_ids, pool_ids, hit_at)
        evaluation.pairs.append(report_pair(model, colour, min_queries))
    return evaluation


def log_evaluation(evaluation: StyleEvaluation, prefix: str) -> None:
    """Metrics `{prefix}_{source}_{target}_hr_at_{n}` (+ random_, colour_, queries) and the
    report as a JSON artifact, into the active MLflow run."""
    metrics: dict[str, float] = {}
    for pair in evaluation.pairs:
        name = pair.pair.replace(":", "_")
        metrics[f"{prefix}_{name}_queries"] = pair.queries
        for key, value in pair.as_dict().items():
            if key.startswith(("hr_at", "random_hr", "colour_hr")) and not math.isnan(value):
                metrics[f"{prefix}_{name}_{key}"] = value
    mlflow.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{prefix}_{REPORT_FILE}"
        path.write_text(json.dumps(evaluation.as_dict(), indent=2))
        mlflow.log_artifact(str(path))


def evaluate_bundle(
    settings: Settings,
    lake: Lakehouse,
    bundle: StyleBundle,
    pairs: list[str] | None = None,
) -> StyleEvaluation:
    """HR@n of a bundle's own vectors on the catalog it was built from (same pinned versions).

    A learned bundle is scored on its held-out items only (its recorded split); a Gram bundle,
    which learned nothing from rooms, on every eligible query.
    """
    meta = bundle.meta
    catalog = read_style_catalog(
        lake,
        settings.lake,
        meta["items_table"]["version"],
        meta["item_rooms_table"]["version"],
        sorted(set(bundle.items["category"])),
    )
    if list(catalog.ids) != list(bundle.items["id"]):
        raise ValueError("the catalog at the bundle's pinned version differs from its items")
    query_mask = None
    label = f"{meta['kind']} (every eligible query)"
    if meta.get("protocol"):  # `style select`: fitted on every item, so these are in-sample
        label = f"{meta['kind']} {meta.get('featurizer')} (in-sample; held out: style_heldout.json)"
    if meta.get("split"):
        split = meta["split"]
        query_mask = holdout_mask(catalog.ids, split["folds"], split["holdout_fold"])
        label = f"{meta['kind']} (held-out queries: {split['rule']})"
    histograms = catalog_histograms(catalog, bundle.encoder.image_size, settings.style.colour_bins)
    return evaluate_vectors(
        catalog,
        bundle.vectors,
        pairs or settings.style.pairs,
        settings.style.hit_at,
        bundle.indexes.metric,
        histograms,
        settings.style.min_queries,
        label,
        query_mask,
    )


def evaluate_style_run(
    settings: Settings, lake: Lakehouse, run_id: str, pairs: list[str] | None = None
) -> StyleEvaluation:
    """Evaluate a run's bundle and log the figures to that run."""
    setup_mlflow(settings.mlflow)
    evaluation = evaluate_bundle(settings, lake, load_run_bundle(run_id), pairs)
    with mlflow.start_run(run_id=run_id):
        log_evaluation(evaluation, "style")
    print(evaluation.table())
    return evaluation
