"""The deployable model: an `mlflow.pyfunc` wrapper around an image-embedding model and its faiss
index, with the item metadata and thumbnails bundled as artifacts.

Request: a DataFrame with a string column `image` (base64 of a PNG/JPEG of any size or mode)
and an optional integer column `k`. Response: one row per (query, rank) with the item id,
the distance, every metadata column of the bundled items table and, unless the `thumbnails`
param is false, a base64 PNG thumbnail.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from pydantic import BaseModel, ConfigDict

from simrec.images import DEFAULT_FORMATS, InvalidImageError, open_image, to_array
from simrec.index.faiss_index import EmbeddingIndex, IndexMismatchError

IMAGE_COLUMN = "image"
K_COLUMN = "k"
THUMBNAILS_PARAM = "thumbnails"
THUMBNAIL_COLUMN = "thumbnail"
RESULT_COLUMNS = ("query", "rank", "item_id", "distance")

# Artifact keys of the bundle (what `simrec.serving.package` logs).
EMBEDDING_MODEL_ARTIFACT = "embedding_model"
INDEX_ARTIFACT = "index"
ITEMS_ARTIFACT = "items"
THUMBNAILS_ARTIFACT = "thumbnails"

ITEM_ID_COLUMN = "id"
MAX_LISTED_PROBLEMS = 5
_DATA_URL_PREFIX = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(rb"\s+")


class InvalidQueryError(MlflowException):
    """A request the model cannot answer; MLflow's scoring server turns it into a 400."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class BundleConfig(BaseModel):
    """How the wrapper turns requests into model input; stored as the pyfunc's model_config."""

    model_config = ConfigDict(extra="forbid")

    image_size: int
    channels: int
    default_k: int
    max_k: int
    max_batch_size: int
    max_image_pixels: int
    # Bundles packaged before the allow-list decode what the decoder accepts by default.
    image_formats: tuple[str, ...] = DEFAULT_FORMATS
    search_threads: int = 1


def decode_query_image(text: object, position: int, config: BundleConfig) -> np.ndarray:
    """One base64 image string → uint8 pixels (size, size, channels); InvalidImageError else."""
    source = f"image {position}"
    if not isinstance(text, str):
        raise InvalidImageError(
            f"{source}: expected a base64 string, got {type(text).__name__} {str(text)[:40]!r}"
        )
    text = _DATA_URL_PREFIX.sub("", text, count=1)
    payload = _WHITESPACE.sub(b"", text.encode("ascii", "replace"))
    try:
        image_bytes = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidImageError(f"{source}: not valid base64 ({error})") from error
    image = open_image(image_bytes, source, config.max_image_pixels, config.image_formats)
    try:
        return to_array(image, config.image_size, config.channels)
    except (OSError, ValueError) as error:
        raise InvalidImageError(f"{source}: cannot convert {image.mode} image ({error})") from error


def query_ks(frame: pd.DataFrame, config: BundleConfig) -> list[int]:
    """The k of every query row: the `k` column where given, else the configured default."""
    if K_COLUMN not in frame.columns:
        return [config.default_k] * len(frame)
    ks, problems = [], []
    for position, value in enumerate(frame[K_COLUMN].tolist()):
        is_integer = isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)
        if not is_integer and isinstance(value, float | np.floating) and float(value).is_integer():
            is_integer, value = True, int(value)
        if not is_integer:
            problems.append(f"k in row {position} must be an integer, got {value!r}")
        elif not 1 <= value <= config.max_k:
            problems.append(f"k in row {position} must be from 1 to {config.max_k}, got {value}")
        else:
            ks.append(int(value))
    if problems:
        raise InvalidQueryError(_listing(problems))
    return ks


def _listing(problems: Sequence[str]) -> str:
    shown = "; ".join(problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    return shown + (f"; and {more} more" if more > 0 else "")


class ImageSearchModel(mlflow.pyfunc.PythonModel):
    """Request validation, image decoding and result rows shared by simrec's image-search models.

    A subclass loads its searcher in `load_searcher` (returning the ids it can return) and
    answers `search(pixels, k) -> (item ids (n, k) object array, distances (n, k))`.
    """

    def load_searcher(self, context: mlflow.pyfunc.PythonModelContext) -> list[str]:
        raise NotImplementedError

    def search(self, pixels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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
        self._position = {item_id: position for position, item_id in enumerate(item_ids)}
        self._metadata = {
            column: items[column].to_numpy() for column in items.columns if column != ITEM_ID_COLUMN
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

    # -- predicting -------------------------------------------------------------------------
    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        pixels, ks = self.parse_queries(model_input)
        item_ids, distances = self.search(pixels, max(ks))
        with_thumbnails = bool((params or {}).get(THUMBNAILS_PARAM, True))
        return self._result_rows(item_ids, distances, ks, with_thumbnails)

    def parse_queries(self, model_input: pd.DataFrame) -> tuple[np.ndarray, list[int]]:
        """Validated pixels (n, size, size, channels) and the k of each query."""
        if not isinstance(model_input, pd.DataFrame):
            raise InvalidQueryError(
                f"expected a DataFrame with columns {IMAGE_COLUMN!r} and optional {K_COLUMN!r}, "
                f"got {type(model_input).__name__}"
            )
        unknown = [c for c in model_input.columns if c not in (IMAGE_COLUMN, K_COLUMN)]
        if IMAGE_COLUMN not in model_input.columns or unknown:
            raise InvalidQueryError(
                f"expected columns {IMAGE_COLUMN!r} (base64 image) and optionally {K_COLUMN!r} "
                f"(integer), got {list(model_input.columns)}"
            )
        if len(model_input) == 0:
            raise InvalidQueryError("the request holds no queries: send at least one image")
        if len(model_input) > self.config.max_batch_size:
            raise InvalidQueryError(
                f"{len(model_input)} queries in one request; the limit is "
                f"{self.config.max_batch_size}"
            )
        ks = query_ks(model_input, self.config)
        arrays, problems = [], []
        for position, text in enumerate(model_input[IMAGE_COLUMN].tolist()):
            try:
                arrays.append(decode_query_image(text, position, self.config))
            except InvalidImageError as error:
                problems.append(str(error))
        if problems:
            raise InvalidQueryError(_listing(problems))
        return np.stack(arrays), ks

    def _result_rows(
        self, item_ids: np.ndarray, distances: np.ndarray, ks: list[int], with_thumbnails: bool
    ) -> pd.DataFrame:
        queries, ranks, found, found_distances = [], [], [], []
        for query, k in enumerate(ks):
            for rank in range(k):
                item_id = item_ids[query, rank]
                if item_id is None:  # the index holds fewer than k items
                    break
                queries.append(query)
                ranks.append(rank + 1)
                found.append(item_id)
                found_distances.append(float(distances[query, rank]))
        positions = np.asarray([self._position[item_id] for item_id in found], dtype=np.int64)
        rows: dict[str, Any] = {
            "query": np.asarray(queries, dtype=np.int64),
            "rank": np.asarray(ranks, dtype=np.int64),
            "item_id": found,
            "distance": np.asarray(found_distances, dtype=np.float64),
        }
        for column, values in self._metadata.items():
            rows[column] = values[positions]
        if with_thumbnails and self._thumbnails is not None:
            rows[THUMBNAIL_COLUMN] = self._thumbnails[positions]
        return pd.DataFrame(rows)


class EmbeddingSearchModel(ImageSearchModel):
    """An embedding SavedModel (`embed`: raw uint8 pixels → embeddings) and one faiss index.

    A plain SavedModel needs no Keras custom layers (nor tensorflow-similarity) to load.
    """

    def load_searcher(self, context: mlflow.pyfunc.PythonModelContext) -> list[str]:
        import tensorflow as tf

        self.index = EmbeddingIndex.load(Path(context.artifacts[INDEX_ARTIFACT]))
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

    def search_embeddings(self, embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`search` for embeddings already computed (batch jobs embed in chunks, then search
        many queries at once: faiss only uses BLAS from ~1000 queries of 128 dimensions)."""
        import faiss

        # faiss's OpenMP threads only add contention when the server already answers
        # requests in parallel; the setting is per calling thread, so restore it.
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.config.search_threads)
        try:
            return self.index.search(embeddings, k)
        finally:
            faiss.omp_set_num_threads(previous)


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
