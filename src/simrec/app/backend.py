"""Where the app's recommendations come from: one small interface, two implementations.

`RestBackend` asks a running `simrec serve` through `SimrecClient` (bearer token);
`InProcessBackend` loads the registered pyfunc model itself. Both take the same input the
models' signature defines (`image` base64, `k`, and for furniture `categories`) and give
`Recommendation`s; every failure a user can cause or meet becomes a `BackendError` whose
message is meant to be shown as is.

"More like this" asks by catalog item id (`item_id` instead of `image`, the item itself
excluded: the by-id contract of issue 14). A registered model whose signature predates that
contract is asked with the item's stored picture instead, and the item is dropped from its answer.
"""

from __future__ import annotations

import base64
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException

from simrec.app.model_info import ModelInfo, registered_model_info
from simrec.config import AppSettings
from simrec.serving.client import (
    AuthenticationError,
    RequestRejectedError,
    ServerError,
    ServerUnavailableError,
    SimrecClient,
)

# The column shown as an item's title, first present wins (fashion: label_name, furniture: name).
TITLE_COLUMNS = ("label_name", "name", "category", "label")


class BackendError(Exception):
    """A failure worth telling the user about, in words they can act on."""


@dataclass(frozen=True)
class Recommendation:
    rank: int
    item_id: str
    distance: float
    title: str
    category: str | None = None  # furniture: the target category this item answers
    thumbnail: bytes | None = None  # encoded image bytes, when the model sends one


def recommendations(rows: list[dict[str, Any]]) -> list[Recommendation]:
    """Model output rows (either model, REST or in-process) → Recommendations."""
    found = []
    for row in rows:
        title = next((row[c] for c in TITLE_COLUMNS if row.get(c) is not None), row["item_id"])
        thumbnail = row.get("thumbnail")
        found.append(
            Recommendation(
                rank=int(row["rank"]),
                item_id=str(row["item_id"]),
                distance=float(row["distance"]),
                title=str(title),
                category=row.get("category"),
                thumbnail=base64.b64decode(thumbnail) if thumbnail else None,
            )
        )
    return found


def _request_record(image: bytes, k: int, categories: list[str] | None) -> dict[str, Any]:
    record: dict[str, Any] = {"image": base64.b64encode(image).decode("ascii"), "k": k}
    if categories:
        record["categories"] = ",".join(categories)
    return record


def _item_record(item_id: str, k: int, categories: list[str] | None) -> dict[str, Any]:
    record: dict[str, Any] = {"item_id": item_id, "k": k}
    if categories:
        record["categories"] = ",".join(categories)
    return record


def without_item(found: list[Recommendation], item_id: str, k: int) -> list[Recommendation]:
    """`found` less `item_id`, at most k, ranked again from 1 (per category for furniture)."""
    kept: list[Recommendation] = []
    rank_in: dict[str | None, int] = {}
    for item in found:
        if item.item_id == item_id or rank_in.get(item.category, 0) >= k:
            continue
        rank_in[item.category] = rank_in.get(item.category, 0) + 1
        kept.append(replace(item, rank=rank_in[item.category]))
    return kept


class Backend(ABC):
    """Recommendations for one query image, or for one catalog item ("more like this")."""

    description: str

    @abstractmethod
    def recommend(
        self, image: bytes, k: int, categories: list[str] | None = None
    ) -> list[Recommendation]: ...

    @abstractmethod
    def similar_to_item(
        self,
        item_id: str,
        k: int,
        categories: list[str] | None = None,
        stored_image: bytes | None = None,
    ) -> list[Recommendation]:
        """The k items most like catalog item `item_id`, itself excluded. `stored_image` is
        the item's picture, used only where the model cannot look items up by id."""

    def model_info(self) -> ModelInfo | None:
        """The registered model answering, when this app can tell."""
        return None

    def prepare(self) -> None:
        """Do the slow part (loading a model) now, once, rather than in the first answer."""
        return None  # a REST backend has nothing to load


class RestBackend(Backend):
    def __init__(self, url: str, token: str, timeout: float = 30.0):
        self.description = f"REST endpoint {url}"
        self._client = SimrecClient(url, token, timeout)

    def recommend(
        self, image: bytes, k: int, categories: list[str] | None = None
    ) -> list[Recommendation]:
        return self._ask(_request_record(image, k, categories))

    def similar_to_item(
        self,
        item_id: str,
        k: int,
        categories: list[str] | None = None,
        stored_image: bytes | None = None,
    ) -> list[Recommendation]:
        return self._ask(_item_record(item_id, k, categories))

    def _ask(self, record: dict[str, Any]) -> list[Recommendation]:
        try:
            rows = self._client.predict([record])
        except ServerUnavailableError as error:
            raise BackendError(f"The recommendation server is not reachable: {error}") from error
        except AuthenticationError as error:
            raise BackendError(
                "The recommendation server refused the API token (HTTP 401). Check "
                "SIMREC_API_TOKEN or the `api_token` Streamlit secret."
            ) from error
        except RequestRejectedError as error:
            what = "this item" if "item_id" in record else "this image"
            raise BackendError(f"The server rejected {what}: {error.message}") from error
        except ServerError as error:
            raise BackendError(f"The recommendation server failed: {error}") from error
        return recommendations(rows)


class InProcessBackend(Backend):
    """The registered model loaded in this process (lazily: loading takes seconds)."""

    def __init__(self, model_uri: str):
        self.description = f"model {model_uri} (in-process)"
        self._model_uri = model_uri
        self._model = None
        self._info: ModelInfo | None = None

    def _loaded(self):
        if self._model is None:
            import mlflow

            try:
                self._model = mlflow.pyfunc.load_model(self._model_uri)
            except (MlflowException, OSError) as error:
                raise BackendError(
                    f"Cannot load {self._model_uri}: {error}. Register a model first "
                    "(`simrec package` / `simrec style register`) or configure an API URL."
                ) from error
            self._info = registered_model_info(self._model_uri)
        return self._model

    def model_info(self) -> ModelInfo | None:
        return self._info

    def prepare(self) -> None:
        self._loaded()

    def _predict(self, record: dict[str, Any], what: str) -> list[Recommendation]:
        model = self._loaded()
        try:
            answer = model.predict(pd.DataFrame([record]))
        except (MlflowException, ValueError) as error:
            message = getattr(error, "message", None) or str(error)
            raise BackendError(f"The model cannot use {what}: {message}") from error
        return recommendations(answer.to_dict(orient="records"))

    def recommend(
        self, image: bytes, k: int, categories: list[str] | None = None
    ) -> list[Recommendation]:
        return self._predict(_request_record(image, k, categories), "this image")

    def _answers_by_id(self) -> bool:
        schema = self._loaded().metadata.get_input_schema()
        return schema is not None and "item_id" in (schema.input_names() or [])

    def similar_to_item(
        self,
        item_id: str,
        k: int,
        categories: list[str] | None = None,
        stored_image: bytes | None = None,
    ) -> list[Recommendation]:
        if self._answers_by_id():
            return self._predict(_item_record(item_id, k, categories), f"item {item_id}")
        if stored_image is None:
            raise BackendError(f"No picture of item {item_id} is stored to search with.")
        # One more than asked: the item itself is (nearly always) its own nearest neighbour.
        found = self._predict(_request_record(stored_image, k + 1, categories), f"item {item_id}")
        return without_item(found, item_id, k)


def api_token(settings: AppSettings, secrets: Any = None) -> str | None:
    """The bearer token: the configured token file, else the environment variable, else the
    `api_token` secret."""
    if settings.token_file is not None:
        return Path(settings.token_file).read_text().strip() or None
    token = os.environ.get(settings.token_env)
    if not token and secrets is not None:
        try:
            token = secrets.get("api_token")
        except FileNotFoundError:  # no secrets.toml at all
            token = None
    return token or None


def make_backend(
    url: str | None, model_uri: str, token: str | None, timeout: float = 30.0
) -> Backend:
    """REST when a URL is configured (a token is then required), else in-process."""
    if not url:
        return InProcessBackend(model_uri)
    if not token:
        raise BackendError(
            f"An API URL is configured ({url}) but no token: set SIMREC_API_TOKEN or the "
            "`api_token` Streamlit secret."
        )
    return RestBackend(url, token, timeout)


def configured_url(configured: str | None, env_name: str) -> str | None:
    """The environment variable wins over the configured URL (the container sets it)."""
    return os.environ.get(env_name) or configured
