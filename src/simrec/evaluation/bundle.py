"""Score a bundle through its own search path: the object `mlflow.pyfunc.load_model` returns
parses each batch of query images exactly as a REST request (base64 → decode → pixels),
embeds them with the bundled SavedModel and searches the bundled faiss index, as `predict`
does. Recall@k and MAP@R over every query, per-class Recall@1, seen/unseen classes apart
when the unseen-class protocol is on, and the raw-pixel kNN baseline on the same queries."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from simrec.config import EvaluationSettings
from simrec.evaluation.decoded import DecodedItems
from simrec.evaluation.queries import NoQuerySetError, QuerySet
from simrec.evaluation.retrieval import average_precision_at_r, retrieval_report
from simrec.images import decode_batch
from simrec.index.scope import IMAGE_COLUMN, KEY_COLUMN, LABEL_COLUMN
from simrec.lake.tables import Lakehouse
from simrec.progress import progress
from simrec.serving.pyfunc import IMAGE_COLUMN as QUERY_IMAGE_COLUMN
from simrec.serving.pyfunc import EmbeddingSearchModel
from simrec.serving.resources import available_cpus

log = logging.getLogger(__name__)

LABEL_NAME_COLUMN = "label_name"
NO_LABEL = -1


@dataclass
class BundleScore:
    """What a bundle answered on a query set, and how good that was."""

    queries: QuerySet  # the queries scored (those whose class the catalog holds)
    metrics: dict[str, float]  # recall_at_k, map_at_r; seen_* / unseen_* with holdout classes
    per_class: dict[int, float]  # Recall@1 by query label
    found_ids: np.ndarray  # (queries, max recall_at) item ids, as `predict` ranks them
    found_labels: np.ndarray  # their labels
    query_pixels: np.ndarray  # uint8, as the bundle decoded them
    query_embeddings: np.ndarray
    baseline: dict[str, float] = field(default_factory=dict)  # raw-pixel kNN, same queries

    def figure(self, name: str) -> float:
        return self.metrics[name]


def load_search_model(model_uri: str) -> EmbeddingSearchModel:
    """The bundle's python model exactly as the scoring server loads it."""
    import mlflow

    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model()


def _request(images: list[bytes]) -> pd.DataFrame:
    return pd.DataFrame({QUERY_IMAGE_COLUMN: [base64.b64encode(p).decode("ascii") for p in images]})


def embed_queries(
    model: EmbeddingSearchModel, images: list[bytes]
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and embeddings of `images`, one request-sized batch at a time through the
    bundle's own request parsing and embedding."""
    batch = model.config.max_batch_size
    pixels, embeddings = [], []
    for start in progress(range(0, len(images), batch), desc="embedding queries", leave=False):
        parsed = model.parse(_request(images[start : start + batch]))
        batch_pixels = np.stack([query.pixels for query in parsed.queries])
        pixels.append(batch_pixels)
        embeddings.append(model.embed(batch_pixels))
    return np.concatenate(pixels), np.concatenate(embeddings)


def evaluation_threads(configured: int | None) -> int:
    """faiss threads for evaluation's searches: `evaluation.search_threads`, or every CPU
    this process may use (`available_cpus`: the cgroup limit, the scheduler's CPU set). The
    bundle's own `search_threads` is sized for a server's parallel requests, not for one
    batch of thousands of deep queries."""
    return configured or available_cpus()


def _label_lookup(model: EmbeddingSearchModel, item_ids: list[str], item_labels: np.ndarray):
    """faiss key → label (NO_LABEL past the items and for faiss's -1, "no result")."""
    keys = np.asarray([model.index.key_of(item_id) for item_id in item_ids], dtype=np.int64)
    lookup = np.full(int(keys.max()) + 2, NO_LABEL, dtype=np.int64)
    lookup[keys] = item_labels

    def labels_of(found_keys: np.ndarray) -> np.ndarray:
        return lookup[np.where(found_keys < 0, len(lookup) - 1, found_keys)]

    return labels_of


def score_bundle(
    model: EmbeddingSearchModel,
    queries: QuerySet,
    settings: EvaluationSettings,
    holdout_classes: list[int] | None = None,
) -> BundleScore:
    """Score `model` on `queries` (see the module docstring); the baseline is left empty
    (`raw_pixel_baseline` fills it)."""
    item_ids = model.index.live_item_ids()
    try:
        item_labels = np.asarray(model.item_metadata(item_ids, LABEL_COLUMN), dtype=np.int64)
    except KeyError as error:
        raise NoQuerySetError(f"the bundled items carry no {LABEL_COLUMN!r}: {error}") from error
    held = np.isin(queries.labels, item_labels)
    if not held.any():
        raise ValueError("no query's class is in the bundle's catalog: nothing to score")
    queries = queries.subset(held)
    classes, counts = np.unique(item_labels, return_counts=True)
    relevant = pd.Series(counts, index=classes).reindex(queries.labels).to_numpy()
    recall_at = sorted(settings.recall_at)
    depth = max(recall_at)
    if settings.map_at_r:
        depth = max(depth, int(relevant.max()))
    depth = min(depth, len(item_ids))
    log.info("scoring %d queries against %d bundled items", len(queries), len(item_ids))
    pixels, embeddings = embed_queries(model, queries.images)
    labels_of = _label_lookup(model, item_ids, item_labels)
    threads = evaluation_threads(settings.search_threads)
    hits = {k: np.zeros(len(queries), dtype=bool) for k in recall_at}
    precision = np.zeros(len(queries))
    found_keys = np.empty((len(queries), min(max(recall_at), depth)), dtype=np.int64)
    chunk = settings.query_chunk
    for start in range(0, len(queries), chunk):
        stop = min(start + chunk, len(queries))
        # The bundle's own search (`search_embeddings` maps these keys to ids), as keys:
        # labels by array lookup, ids only for the results kept.
        keys, _ = model.search_embedding_keys(embeddings[start:stop], depth, threads=threads)
        labels = labels_of(keys)
        query_labels = queries.labels[start:stop]
        for k in recall_at:
            hits[k][start:stop] = (labels[:, :k] == query_labels[:, None]).any(axis=1)
        if settings.map_at_r:
            precision[start:stop] = average_precision_at_r(
                query_labels, labels, np.minimum(relevant[start:stop], depth)
            )
        found_keys[start:stop] = keys[:, : found_keys.shape[1]]
    found_ids = model.index.ids_of(found_keys)
    found_labels = labels_of(found_keys)

    def summary(mask: np.ndarray, prefix: str = "") -> dict[str, float]:
        figures = {f"{prefix}recall_at_{k}": float(hits[k][mask].mean()) for k in recall_at}
        if settings.map_at_r:
            figures[f"{prefix}map_at_r"] = float(precision[mask].mean())
        return figures

    every = np.ones(len(queries), dtype=bool)
    metrics = summary(every)
    if holdout_classes:
        unseen = np.isin(queries.labels, holdout_classes)
        for mask, prefix in ((~unseen, "seen_"), (unseen, "unseen_")):
            if mask.any():
                metrics.update(summary(mask, prefix))
    first = recall_at[0]
    per_class = {
        int(label): float(hits[first][queries.labels == label].mean())
        for label in np.unique(queries.labels)
    }
    return BundleScore(
        queries, metrics, per_class, found_ids, found_labels, pixels, embeddings, baseline={}
    )


def catalog_pixels(
    model: EmbeddingSearchModel,
    lineage: dict[str, Any],
    item_ids: list[str],
    decoded: DecodedItems | None = None,
) -> np.ndarray:
    """The bundled items' images from the bundle's source table, decoded as queries are
    (or taken from `decoded`, the same rows decoded so by the package step)."""
    if decoded is not None:
        return decoded.pixels_of(item_ids)
    lake = Lakehouse(Path(lineage["source_table_path"]).parent)
    rows = lake.read(
        lineage["source_table"],
        int(lineage["source_table_version"]),
        columns=[KEY_COLUMN, IMAGE_COLUMN],
    )
    rows = rows.filter(pc.is_in(rows.column(KEY_COLUMN), value_set=pa.array(item_ids)))
    image_of = dict(
        zip(rows.column(KEY_COLUMN).to_pylist(), rows.column(IMAGE_COLUMN).to_pylist(), strict=True)
    )
    missing = [item_id for item_id in item_ids if item_id not in image_of]
    if missing:
        raise LookupError(
            f"{len(missing)} bundled items are not in the source table: {missing[:3]}"
        )
    config = model.config
    return decode_batch(
        [image_of[item_id] for item_id in item_ids],
        config.image_size,
        config.channels,
        config.max_image_pixels,
        config.image_formats,
    )


def _as_vectors(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(len(pixels), -1).astype(np.float32) / 255.0


def raw_pixel_baseline(
    score: BundleScore,
    model: EmbeddingSearchModel,
    items_pixels: np.ndarray,
    settings: EvaluationSettings,
) -> dict[str, float]:
    """Exact L2 kNN on raw pixels: the same queries against the same catalog items."""
    item_ids = model.index.live_item_ids()
    item_labels = np.asarray(model.item_metadata(item_ids, LABEL_COLUMN), dtype=np.int64)
    return retrieval_report(
        _as_vectors(score.query_pixels),
        score.queries.labels,
        _as_vectors(items_pixels),
        item_labels,
        sorted(settings.recall_at),
        "l2",
        settings.map_at_r,
        query_chunk=settings.query_chunk,
        threads=evaluation_threads(settings.search_threads),
    )
