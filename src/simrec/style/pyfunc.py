"""`simrec-style`: the style bundle as an MLflow pyfunc model.

Input: a DataFrame with column `image` (base64-encoded image bytes), and optionally per row
`k` (results per category) and `categories` (comma-separated, or a list; default: every
category but the query's own). Output: one row per recommendation — `query` (input row
position), `category`, `rank`, `item_id`, `name`, `distance`.

Served like the fashion model, by the same bearer-token server (`simrec serve --model-uri
models:/simrec-style@champion`, `simrec.serving.server`), which enforces this signature. Its own
wrapper, not `simrec.serving.pyfunc`: the bundle differs (featurizer, per-category indexes).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

ARTIFACT_KEY = "style_bundle"
OUTPUT_COLUMNS = ["query", "category", "rank", "item_id", "name", "distance"]


def _categories(value: object) -> list[str] | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str):
        names = [part.strip() for part in value.split(",") if part.strip()]
    else:
        names = [str(part).strip() for part in value]
    return names or None


def _k(value: object, default: int, maximum: int) -> int:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return default
    k = int(value)
    if not 0 < k <= maximum:
        raise ValueError(f"k must be between 1 and {maximum}, got {k}")
    return k


class StylePyfunc(mlflow.pyfunc.PythonModel):
    """Loads the bundle once; each row is one query image."""

    def __init__(self, default_k: int = 10, max_k: int = 100):
        self.default_k = default_k
        self.max_k = max_k
        self.bundle = None

    def load_context(self, context) -> None:
        from simrec.style.bundle import StyleBundle

        self.bundle = StyleBundle.load(Path(context.artifacts[ARTIFACT_KEY]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from simrec.style.recommend import recommend_for_payload

        if "image" not in model_input.columns:
            raise ValueError("input needs an `image` column of base64-encoded image bytes")
        from simrec.style.recommend import query_vectors

        records = model_input.to_dict(orient="records")
        payloads = []
        for position, record in enumerate(records):
            try:
                payloads.append(base64.b64decode(record["image"], validate=True))
            except (binascii.Error, TypeError, ValueError) as error:
                raise ValueError(
                    f"row {position}: `image` is not valid base64 ({error})"
                ) from error
        # Every image of the request through the featurizer as one batch.
        vectors = query_vectors(self.bundle, payloads, [f"row {p}" for p in range(len(records))])
        rows = []
        for position, (record, payload) in enumerate(zip(records, payloads, strict=True)):
            results = recommend_for_payload(
                self.bundle,
                payload,
                _k(record.get("k"), self.default_k, self.max_k),
                to=_categories(record.get("categories")),
                source=f"row {position}",
                vector=vectors[position],
            )
            rows.extend({"query": position, **result.__dict__} for result in results)
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def log_style_pyfunc(
    bundle_folder: Path,
    registered_model_name: str | None,
    default_k: int,
    max_k: int,
    alias: str | None = None,
) -> str:
    """Log (and register, pointing `alias` at the new version) the bundle as a pyfunc model
    in the active run; returns the URI to load it by."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    signature = ModelSignature(
        inputs=Schema(
            [
                ColSpec("string", "image"),
                ColSpec("long", "k", required=False),
                ColSpec("string", "categories", required=False),
            ]
        ),
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
    )
    info = mlflow.pyfunc.log_model(
        name="style_model",
        python_model=StylePyfunc(default_k, max_k),
        artifacts={ARTIFACT_KEY: str(bundle_folder)},
        code_paths=[str(Path(__file__).resolve().parents[1])],
        signature=signature,
        registered_model_name=registered_model_name,
    )
    if registered_model_name and alias:
        version = info.registered_model_version
        mlflow.MlflowClient().set_registered_model_alias(registered_model_name, alias, version)
        return f"models:/{registered_model_name}@{alias}"
    return info.model_uri
