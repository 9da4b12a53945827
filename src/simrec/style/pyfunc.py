"""`simrec-style`: the style bundle as an MLflow pyfunc model.

Input: simrec's request contract (`simrec.serving.contract`, shared with the fashion model):
per row an `image` (base64) or a catalog `item_id`, optionally `k` (results per category),
`categories` (the categories to complete the look from; default: every category but the
query's own) and `exclude_ids`, per row or in `params`. Output: one row per recommendation —
`query` (input row position), `category`, `rank`, `item_id`, `name`, `distance`.

Served like the fashion model, by the same bearer-token server (`simrec serve --model-uri
models:/simrec-style@champion`, `simrec.serving.server`), which enforces this signature. Its own
wrapper, not `simrec.serving.pyfunc`: the bundle differs (featurizer, per-category indexes).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd

from simrec.serving.contract import (
    CATEGORIES,
    ParsedRequest,
    Query,
    RequestLimits,
    params_schema,
    parse_request,
    request_schema,
)

if TYPE_CHECKING:
    from simrec.config import Settings

ARTIFACT_KEY = "style_bundle"
OUTPUT_COLUMNS = ["query", "category", "rank", "item_id", "name", "distance"]
STYLE_CHANNELS = 3


class StylePyfunc(mlflow.pyfunc.PythonModel):
    """Loads the bundle once; each row is one query. `predict` = `answer([parse(...)])`, as
    for the fashion model: the requests' images are encoded together, in chunks of
    `style.serve_encode_rows`."""

    def __init__(self, limits: RequestLimits, encode_rows: int | None = None):
        self.limits = limits
        self.encode_rows = encode_rows  # None: all of a request's images at once
        self.bundle = None

    def load_context(self, context) -> None:
        from simrec.style.bundle import StyleBundle

        self.bundle = StyleBundle.load(Path(context.artifacts[ARTIFACT_KEY]))
        featurizer = self.bundle.encoder.featurizer
        for part in (featurizer, getattr(featurizer, "style", None)):
            if hasattr(part, "show_progress"):  # Gram/pooled featurizers draw a tqdm bar
                part.show_progress = False  # no bars in a server's log
        items = self.bundle.items
        self._category_of = dict(zip(items["id"].astype(str), items["category"], strict=True))
        self._names = dict(zip(items["id"].astype(str), items["name"], strict=True))
        self._row_of = {item_id: row for row, item_id in enumerate(items["id"].astype(str))}
        self._row_of_sha = {sha: row for row, sha in enumerate(items["sha256"])}

    @property
    def probe_item_id(self) -> str:
        """A catalog item the server's readiness self-query asks about."""
        return next(iter(self._category_of))

    @property
    def index_size(self) -> int:
        return len(self.bundle.indexes)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.answer([self.parse(model_input, params)])[0]

    def parse(self, model_input: object, params: dict[str, Any] | None = None) -> ParsedRequest:
        return parse_request(
            model_input,
            params,
            self.limits,
            self.bundle.encoder.image_size,
            STYLE_CHANNELS,
            {CATEGORIES: frozenset(self.bundle.indexes.categories)},
            self._category_of,
        )

    def answer(self, requests: list[ParsedRequest]) -> list[pd.DataFrame]:
        queries = [query for request in requests for query in request.queries]
        vectors = self._query_vectors(queries)
        frames, start = [], 0
        for request in requests:
            rows = []
            for query, vector in zip(request.queries, vectors[start:], strict=False):
                rows.extend(self._recommend(query, vector))
            start += len(request.queries)
            frames.append(pd.DataFrame(rows, columns=OUTPUT_COLUMNS))
        return frames

    def _query_vectors(self, queries: list[Query]) -> list[np.ndarray | None]:
        """Index vectors: a catalog item (named, or its very photo) gets its own indexed
        vector (which also holds what an image alone lacks, e.g. the product text); every
        other image goes through the encoder, batched `style.serve_encode_rows` at a time
        (one call per chunk, never per row: the chunk bounds the memory a request holds)."""
        from simrec.images import sha256_hex

        vectors: list[np.ndarray | None] = [None] * len(queries)
        images = []
        for n, query in enumerate(queries):
            row = (
                self._row_of.get(query.item_id)
                if query.item_id is not None
                else self._row_of_sha.get(sha256_hex(query.payload))
            )
            if row is not None:
                vectors[n] = self.bundle.vectors[row]
            else:
                images.append(n)
        if images:
            rows = getattr(self, "encode_rows", None) or len(images)  # older pickles: None
            for start in range(0, len(images), rows):
                chunk = images[start : start + rows]
                encoded = self.bundle.encoder.encode(np.stack([queries[n].pixels for n in chunk]))
                for n, vector in zip(chunk, encoded, strict=True):
                    vectors[n] = vector
        return vectors

    def _recommend(self, query: Query, vector: np.ndarray) -> list[dict[str, Any]]:
        from simrec.images import sha256_hex
        from simrec.style.recommend import query_category, target_categories

        bundle = self.bundle
        excluded = set(query.excluded())
        if query.item_id is not None:
            own = str(self._category_of[query.item_id])
        else:
            # A catalog photo as the query: never recommend that very item back.
            same = bundle.items.loc[bundle.items["sha256"] == sha256_hex(query.payload), "id"]
            excluded |= set(same.astype(str))
            own = None if query.categories else query_category(bundle, query.payload, vector)
        rows = []
        for category in target_categories(bundle, list(query.categories or ()), own, False):
            ids, distances = bundle.indexes.search(vector[None], category, query.k + len(excluded))
            found = [
                (str(item_id), float(distance))
                for item_id, distance in zip(ids[0], distances[0], strict=True)
                if item_id is not None and str(item_id) not in excluded
            ][: query.k]
            rows.extend(
                {
                    "query": query.position,
                    "category": category,
                    "rank": rank + 1,
                    "item_id": item_id,
                    "name": self._names.get(item_id),
                    "distance": distance,
                }
                for rank, (item_id, distance) in enumerate(found)
            )
        return rows


def style_limits(settings) -> RequestLimits:
    """The style model's request limits: k from `style.*`, the rest from `serving.*`."""
    return RequestLimits(
        default_k=settings.style.n,
        max_k=settings.style.max_n,
        max_batch_size=settings.serving.max_batch_size,
        max_image_pixels=settings.serving.max_image_pixels,
        image_formats=tuple(settings.serving.image_formats),
    )


# What a style bundle imports beyond a fashion bundle: TF-IDF (scikit-learn, its joblib).
STYLE_DISTRIBUTIONS = ("scikit-learn", "joblib")


def log_style_pyfunc(
    bundle_folder: Path,
    registered_model_name: str | None,
    settings: Settings,
    alias: str | None = None,
    default_k: int | None = None,
    max_k: int | None = None,
) -> str:
    """Log (and register, pointing `alias` at the new version) the bundle as a pyfunc model
    in the active run; returns the URI to load it by. Limits come from `settings`;
    `default_k` / `max_k` override `style.n` / `style.max_n`."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    limits = style_limits(settings)
    overrides = {"default_k": default_k, "max_k": max_k}
    limits = limits.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    signature = ModelSignature(
        inputs=request_schema(),
        outputs=Schema(
            [
                ColSpec("long", "query"),
                ColSpec("string", "category"),
                ColSpec("long", "rank"),
                ColSpec("string", "item_id"),
                ColSpec("string", "name", required=False),
                ColSpec("double", "distance"),
            ]
        ),
        params=params_schema(),
    )
    from simrec.serving.package import runtime_requirements

    info = mlflow.pyfunc.log_model(
        name="style_model",
        python_model=StylePyfunc(limits, settings.style.serve_encode_rows),
        artifacts={ARTIFACT_KEY: str(bundle_folder)},
        code_paths=[str(Path(__file__).resolve().parents[1])],
        # Named, as the fashion bundle's are: MLflow's inference loads the model in a
        # subprocess (~10 s here) and missed tensorflow, faiss and pillow, which it needs.
        pip_requirements=runtime_requirements(STYLE_DISTRIBUTIONS),
        signature=signature,
        registered_model_name=registered_model_name,
    )
    if registered_model_name and alias:
        version = info.registered_model_version
        mlflow.MlflowClient().set_registered_model_alias(registered_model_name, alias, version)
        return f"models:/{registered_model_name}@{alias}"
    return info.model_uri
