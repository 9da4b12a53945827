"""Where the app's recommendations come from: one small interface, two implementations.

`RestBackend` asks a running `simrec serve` through `SimrecClient` (bearer token);
`InProcessBackend` loads the registered pyfunc model itself. Both take the same input the
models' signature defines (`image` base64, `k`, and for furniture `categories`) and give
`Recommendation`s; every failure a user can cause or meet becomes a `BackendError` whose
message is meant to be shown as is.
"""

from __future__ import annotations

import base64
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException

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


class Backend(ABC):
    """Recommendations for one query image."""

    description: str

    @abstractmethod
    def recommend(
        self, image: bytes, k: int, categories: list[str] | None = None
    ) -> list[Recommendation]: ...


class RestBackend(Backend):
    def __init__(self, url: str, token: str, timeout: float = 30.0):
        self.description = f"REST endpoint {url}"
        self._client = SimrecClient(url, token, timeout)

    def recommend(
        self, image: bytes, k: int, categories: list[str] | None = None
    ) -> list[Recommendation]:
        try:
            rows = self._client.predict([_request_record(image, k, categories)])
        except ServerUnavailableError as error:
            raise BackendError(f"The recommendation server is not reachable: {error}") from error
        except AuthenticationError as error:
            raise BackendError(
                "The recommendation server refused the API token (HTTP 401). Check "
                "SIMREC_API_TOKEN or the `api_token` Streamlit secret."
            ) from error
        except RequestRejectedError as error:
            raise BackendError(f"The server rejected this image: {error.message}") from error
        except ServerError as error:
            raise BackendError(f"The recommendation server failed: {error}") from error
        return recommendations(rows)


class InProcessBackend(Backend):
    """The registered model loaded in this process (lazily: loading takes seconds)."""

    def __init__(self, model_uri: str):
        self.description = f"model {model_uri} (in-process)"
        self._model_uri = model_uri
        self._model = None

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
        return self._model

    def recommend(
        self, image: bytes, k: int, categories: list[str] | None = None
    ) -> list[Recommendation]:
        model = self._loaded()
        frame = pd.DataFrame([_request_record(image, k, categories)])
        try:
            answer = model.predict(frame)
        except (MlflowException, ValueError) as error:
            message = getattr(error, "message", None) or str(error)
            raise BackendError(f"The model cannot use this image: {message}") from error
        return recommendations(answer.to_dict(orient="records"))


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
