"""The deployable model: an `mlflow.pyfunc` wrapper around an image-embedding model and its faiss
index, with the item metadata and thumbnails bundled as artifacts.

Request: simrec's request contract (`simrec.serving.contract`): per row an `image` (base64 of
a PNG/JPEG of any size or mode) or a catalog `item_id`, an optional `k`, and filters
(`categories` / `labels` to keep, `exclude_ids`) per row or in `params`. Response: one row
per (query, rank) with the item id, the distance, every metadata column of the bundled items
table and, unless the `thumbnails` param is false, a base64 PNG thumbnail.
"""

from __future__ import annotations

import base64
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from simrec.index.faiss_index import EmbeddingIndex, IndexMismatchError
from simrec.serving.contract import (
    CATEGORIES,
    IMAGE_COLUMN,
    K_COLUMN,
    LABELS,
    THUMBNAILS_PARAM,
    InvalidQueryError,
    ParsedRequest,
    Query,
    decode_image,
    parse_request,
)

log = logging.getLogger(__name__)

__all__ = ["IMAGE_COLUMN", "K_COLUMN", "THUMBNAILS_PARAM", "InvalidQueryError"]

THUMBNAIL_COLUMN = "thumbnail"
RESULT_COLUMNS = ("query", "rank", "item_id", "distance")

# Artifact keys of the bundle (what `simrec.serving.package` logs).
EMBEDDING_MODEL_ARTIFACT = "embedding_model"
INDEX_ARTIFACT = "index"
ITEMS_ARTIFACT = "items"
THUMBNAILS_ARTIFACT = "thumbnails"

ITEM_ID_COLUMN = "id"
# The items-table column each keep-filter matches, first present wins.
FILTER_COLUMNS = {CATEGORIES: ("category",), LABELS: ("label_name", "label")}


class BundleConfig(BaseModel):
    """How the wrapper turns requests into model input; stored as the pyfunc's model_config."""

    model_config = ConfigDict(extra="forbid")

    image_size: int
    channels: int
    default_k: int
    max_k: int
    max_batch_size: int
    max_image_pixels: int
    # Bundles packaged before the allow-list carry none: None, serving.image_formats of
    # conf/simrec.yaml (the decoder's `configured_formats`).
    image_formats: tuple[str, ...] | None = None
    search_threads: int = 1
    # Bundles packaged before this keep faiss's own choice of when exact search uses BLAS.
    search_blas_min_queries: int | None = None


def decode_query_image(text: object, position: int, config: BundleConfig) -> np.ndarray:
    """One base64 image string → uint8 pixels (size, size, channels); InvalidImageError else."""
    pixels, _ = decode_image(
        text,
        position,
        config.max_image_pixels,
        config.image_size,
        config.channels,
        config.image_formats,
    )
    return pixels


class ImageSearchModel(mlflow.pyfunc.PythonModel):
    """Request validation, search and result rows shared by simrec's image-search models.

    A subclass loads its searcher in `load_searcher` (returning the ids it can return) and
    answers `embed(pixels)`, `item_vectors(keys)` and `search_embeddings(vectors, k, among)`
    with `index` its EmbeddingIndex.

    `predict` = `answer([parse(...)])`: the server's micro-batcher validates each request on
    its own (`parse`) and answers many at once (`answer`: one embedding call, one search per
    filter), so a bad request never fails the requests batched with it.
    """

    index: EmbeddingIndex

    def load_searcher(self, context: mlflow.pyfunc.PythonModelContext) -> list[str]:
        raise NotImplementedError

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def search_embeddings(
        self, embeddings: np.ndarray, k: int, among: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    # -- loading ----------------------------------------------------------------------------
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.config = BundleConfig.model_validate(context.model_config or {})
        items = pd.read_parquet(context.artifacts[ITEMS_ARTIFACT])
        searchable_ids = self.load_searcher(context)
        thumbnails = None
        if THUMBNAILS_ARTIFACT in context.artifacts:
            thumbnails = pd.read_parquet(context.artifacts[THUMBNAILS_ARTIFACT])
        self._load_items(items, searchable_ids, thumbnails)

    def _load_items(
        self, items: pd.DataFrame, searchable_ids: list[str], thumbnails: pd.DataFrame | None
    ) -> None:
        """Keep metadata (and thumbnails) as arrays aligned by position; fail on any mismatch."""
        if ITEM_ID_COLUMN not in items.columns:
            raise IndexMismatchError(f"the items table has no {ITEM_ID_COLUMN!r} column")
        item_ids = items[ITEM_ID_COLUMN].astype(str).tolist()
        _check_same_ids("items table", item_ids, "index", searchable_ids)
        self._item_ids = item_ids
        self._position = {item_id: position for position, item_id in enumerate(item_ids)}
        self._metadata = {
            column: items[column].to_numpy() for column in items.columns if column != ITEM_ID_COLUMN
        }
        # Each item's faiss key, by position; and the values each keep-filter matches.
        self._keys = np.asarray([self.index.key_of(i) for i in item_ids], dtype=np.int64)
        self._filter_values: dict[str, np.ndarray] = {}
        for name, candidates in FILTER_COLUMNS.items():
            column = next((c for c in candidates if c in self._metadata), None)
            if column is not None:
                self._filter_values[name] = self._metadata[column].astype(str)
        self._known_values = {
            name: frozenset(values.tolist()) for name, values in self._filter_values.items()
        }
        self._thumbnails = None
        if thumbnails is not None:
            thumbnail_ids = thumbnails[ITEM_ID_COLUMN].astype(str).tolist()
            _check_same_ids("items table", item_ids, "thumbnails", thumbnail_ids)
            encoded = {
                item_id: base64.b64encode(png).decode("ascii")
                for item_id, png in zip(thumbnail_ids, thumbnails[THUMBNAIL_COLUMN], strict=True)
            }
            self._thumbnails = np.asarray([encoded[item_id] for item_id in item_ids], dtype=object)

    def item_metadata(self, item_ids: Sequence[str], column: str) -> np.ndarray:
        """The `column` values of the bundled items `item_ids` (evaluation reads labels so)."""
        if column not in self._metadata:
            raise KeyError(f"the bundled items have no {column!r} column")
        positions = np.asarray([self._position[item_id] for item_id in item_ids], dtype=np.int64)
        return self._metadata[column][positions]

    @property
    def probe_item_id(self) -> str:
        """A catalog item the server's readiness self-query asks about."""
        return self._item_ids[0]

    @property
    def index_size(self) -> int:
        return len(self.index)

    # -- predicting -------------------------------------------------------------------------
    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        return self.answer([self.parse(model_input, params)])[0]

    def parse(self, model_input: object, params: dict[str, Any] | None = None) -> ParsedRequest:
        """The request validated against the contract (InvalidQueryError otherwise)."""
        return parse_request(
            model_input,
            params,
            self.config,
            self.config.image_size,
            self.config.channels,
            self._known_values,
            self._position,
        )

    def answer(self, requests: list[ParsedRequest]) -> list[pd.DataFrame]:
        """Result rows of each request: every image of every request embedded in one call,
        one filtered search per distinct keep-filter."""
        return [pd.DataFrame(columns) for columns in self._answer_arrays(requests)]

    def answer_columns(self, requests: list[ParsedRequest]) -> list[dict[str, list[Any]]]:
        """`answer`'s result rows as column name → plain Python values, what the server
        writes as JSON: building a DataFrame per request only to turn it back into records
        cost the server as much CPU as the embedding."""
        return [
            {
                name: values.tolist() if isinstance(values, np.ndarray) else values
                for name, values in columns.items()
            }
            for columns in self._answer_arrays(requests)
        ]

    def _answer_arrays(self, requests: list[ParsedRequest]) -> list[dict[str, Any]]:
        queries = [query for request in requests for query in request.queries]
        vectors = self._query_vectors(queries)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for number, query in enumerate(queries):
            groups[query.keep].append(number)
        found: list[list[tuple[str, float]]] = [[] for _ in queries]
        for keep, numbers in groups.items():
            among = self._eligible_keys(*keep)
            results = self._search_group([queries[n] for n in numbers], vectors[numbers], among)
            for number, result in zip(numbers, results, strict=True):
                found[number] = result
        answers, start = [], 0
        for request in requests:
            stop = start + len(request.queries)
            answers.append(self._result_columns(found[start:stop], request.thumbnails))
            start = stop
        return answers

    def _query_vectors(self, queries: list[Query]) -> np.ndarray:
        vectors = np.zeros((len(queries), self.index.dim), dtype=np.float32)
        images = [n for n, query in enumerate(queries) if query.pixels is not None]
        if images:
            vectors[images] = self.embed(np.stack([queries[n].pixels for n in images]))
        items = [n for n, query in enumerate(queries) if query.item_id is not None]
        if items:
            keys = [self._keys[self._position[queries[n].item_id]] for n in items]
            vectors[items] = self.index.vectors(np.asarray(keys, dtype=np.int64))
        return vectors

    def _eligible_keys(
        self, categories: tuple[str, ...] | None, labels: tuple[str, ...] | None
    ) -> np.ndarray | None:
        """faiss keys of the items the keep-filters allow; None when nothing is filtered."""
        if categories is None and labels is None:
            return None
        mask = np.ones(len(self._keys), dtype=bool)
        for name, names in ((CATEGORIES, categories), (LABELS, labels)):
            if names is not None:
                mask &= np.isin(self._filter_values[name], list(names))
        return self._keys[mask]

    def _search_group(
        self, queries: list[Query], vectors: np.ndarray, among: np.ndarray | None
    ) -> list[list[tuple[str, float]]]:
        """(item id, distance) lists of queries sharing keep-filters: filtered inside faiss,
        exclusions over-fetched, and an exact search over the eligible items for any query an
        approximate index answered with fewer than k of them."""
        eligible = len(self._keys) if among is None else len(among)
        if eligible == 0:
            return [[] for _ in queries]
        excluded = [self._excluded_keys(query, among) for query in queries]
        fetch = min(eligible, max(q.k + len(e) for q, e in zip(queries, excluded, strict=True)))
        ids, distances = self.search_embeddings(vectors, fetch, among)
        results = []
        for row, query in enumerate(queries):
            drop = query.excluded()
            kept = [
                (item_id, float(distance))
                for item_id, distance in zip(ids[row], distances[row], strict=True)
                if item_id is not None and item_id not in drop
            ][: query.k]
            wanted = min(query.k, eligible - len(excluded[row]))
            if len(kept) < wanted:
                log.debug("query %d: %d of %d results; exact search", row, len(kept), wanted)
                kept = self._exact(vectors[row], query, among, excluded[row])
            results.append(kept)
        return results

    def _excluded_keys(self, query: Query, among: np.ndarray | None) -> np.ndarray:
        positions = [self._position[i] for i in query.excluded() if i in self._position]
        keys = self._keys[positions]
        return keys if among is None else keys[np.isin(keys, among)]

    def _exact(
        self, vector: np.ndarray, query: Query, among: np.ndarray | None, excluded: np.ndarray
    ) -> list[tuple[str, float]]:
        keys = self._keys if among is None else among
        keys = keys[~np.isin(keys, excluded)]
        stored = self.index.vectors(keys)
        if self.index.settings.metric == "ip":
            distances = 1.0 - stored @ vector
        else:
            distances = np.sqrt(np.maximum(((stored - vector) ** 2).sum(axis=1), 0.0))
        order = np.argsort(distances, kind="stable")[: query.k]
        return [(self.index.item_ids[keys[n]], float(distances[n])) for n in order]

    def _result_columns(
        self, found: list[list[tuple[str, float]]], with_thumbnails: bool
    ) -> dict[str, Any]:
        """Result columns as arrays (item ids a list), one row per (query, rank)."""
        queries, ranks, item_ids, found_distances = [], [], [], []
        for query, results in enumerate(found):
            for rank, (item_id, distance) in enumerate(results):
                queries.append(query)
                ranks.append(rank + 1)
                item_ids.append(item_id)
                found_distances.append(distance)
        positions = np.asarray([self._position[item_id] for item_id in item_ids], dtype=np.int64)
        columns: dict[str, Any] = {
            "query": np.asarray(queries, dtype=np.int64),
            "rank": np.asarray(ranks, dtype=np.int64),
            "item_id": item_ids,
            "distance": np.asarray(found_distances, dtype=np.float64),
        }
        for column, values in self._metadata.items():
            columns[column] = values[positions]
        if with_thumbnails and self._thumbnails is not None:
            columns[THUMBNAIL_COLUMN] = self._thumbnails[positions]
        return columns


class EmbeddingSearchModel(ImageSearchModel):
    """An embedding SavedModel (`embed`: raw uint8 pixels → embeddings) and one faiss index.

    A plain SavedModel needs no Keras custom layers (nor tensorflow-similarity) to load.
    """

    def load_searcher(self, context: mlflow.pyfunc.PythonModelContext) -> list[str]:
        import tensorflow as tf

        self.index = EmbeddingIndex.load(Path(context.artifacts[INDEX_ARTIFACT]))
        if self.config.search_blas_min_queries is not None:
            use_blas_from(self.config.search_blas_min_queries, self.index.dim)
        self._saved_model = tf.saved_model.load(context.artifacts[EMBEDDING_MODEL_ARTIFACT])
        self._embed = self._saved_model.embed
        size, channels = self.config.image_size, self.config.channels
        probe = self._embed(np.zeros((1, size, size, channels), dtype=np.uint8)).numpy()
        if probe.shape[-1] != self.index.dim:
            raise IndexMismatchError(
                f"the embedding model outputs {probe.shape[-1]} dimensions, the index holds "
                f"{self.index.dim}"
            )
        return self.index.live_item_ids()

    def search(self, pixels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.search_embeddings(self.embed(pixels), k)

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """Embeddings of uint8 pixels (n, size, size, channels) with the bundled model."""
        return self._embed(pixels).numpy()

    def search_embeddings(
        self, embeddings: np.ndarray, k: int, among: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search embeddings already computed (`among`: only these faiss keys). Batch jobs
        embed in chunks, then search many queries at once: faiss only uses BLAS from ~1000
        queries of 128 dimensions."""
        keys, distances = self.search_embedding_keys(embeddings, k, among)
        return self.index.ids_of(keys), distances

    def search_embedding_keys(
        self,
        embeddings: np.ndarray,
        k: int,
        among: np.ndarray | None = None,
        threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`search_embeddings` as faiss keys (`EmbeddingIndex.search_keys`), on `threads`
        threads (None: `search_threads` of the bundle config: more threads only add
        contention when the server already answers requests in parallel)."""
        threads = self.config.search_threads if threads is None else threads
        return self.index.search_keys(embeddings, k, among, threads=threads)


def use_blas_from(queries: int, dim: int) -> None:
    """Exact (flat) search of `queries` or more queries at once through BLAS: one matrix
    product instead of a scan per query, what makes a micro-batch cheaper per query than
    single requests. faiss decides by queries × dimensions, process-wide."""
    import faiss

    faiss.cvar.distance_compute_blas_threshold = queries * dim


def _check_same_ids(name: str, ids: list[str], other_name: str, other_ids: list[str]) -> None:
    if len(set(ids)) != len(ids):
        raise IndexMismatchError(f"the {name} repeats item ids")
    if len(ids) != len(other_ids) or set(ids) != set(other_ids):
        only_here = sorted(set(ids) - set(other_ids))[:3]
        only_there = sorted(set(other_ids) - set(ids))[:3]
        raise IndexMismatchError(
            f"the {name} holds {len(ids)} items but the {other_name} {len(other_ids)}; "
            f"only in the {name}: {only_here}, only in the {other_name}: {only_there}"
        )
