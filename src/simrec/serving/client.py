"""What shops call: `SimrecClient(url, token).similar(image, k=5)` against `simrec serve`, or
`similar_to_item(item_id, k=5)` for "more like this catalog item"; both take the filters
`categories`, `labels` (keep only these) and `exclude_ids`.

Results are typed (`SimilarItem`, thumbnails decoded to PIL images); failures raise
`AuthenticationError` (401), `RequestRejectedError` (other 4xx, with the server's message),
`ServerError` (5xx) or `ServerUnavailableError` (cannot connect, timeout).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

ImageInput = bytes | str | Path | Image.Image

INVOCATIONS = "/invocations"
VERSION = "/version"
# The column shown as an item's label, first present wins (fashion: label_name, furniture:
# category); every column is also in `SimilarItem.metadata`.
DISPLAY_LABEL_COLUMNS = ("label_name", "category", "label")
_RESULT_FIELDS = ("query", "rank", "item_id", "distance", "thumbnail")


class SimrecClientError(Exception):
    """Base class of the client's errors."""


class ServerUnavailableError(SimrecClientError):
    """The server could not be reached or did not answer in time."""


class AuthenticationError(SimrecClientError):
    """The server refused the token (HTTP 401)."""


class RequestRejectedError(SimrecClientError):
    """The server rejected the request (HTTP 4xx other than 401): `message` says why."""

    def __init__(self, status: int, error_code: str, message: str):
        super().__init__(f"HTTP {status} {error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.message = message


class ServerError(SimrecClientError):
    """The server failed (HTTP 5xx)."""


@dataclass(frozen=True)
class SimilarItem:
    rank: int
    item_id: str
    distance: float
    label: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    thumbnail: Image.Image | None = None


def image_bytes(image: ImageInput) -> bytes:
    """Encoded image bytes: raw bytes as given, a file's content, or a PIL image as PNG."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    return Path(image).read_bytes()


def _item(row: dict[str, Any]) -> SimilarItem:
    metadata = {key: value for key, value in row.items() if key not in _RESULT_FIELDS}
    label = next((metadata[c] for c in DISPLAY_LABEL_COLUMNS if c in metadata), None)
    thumbnail = None
    if row.get("thumbnail"):
        thumbnail = Image.open(io.BytesIO(base64.b64decode(row["thumbnail"])))
        thumbnail.load()
    return SimilarItem(
        rank=int(row["rank"]),
        item_id=str(row["item_id"]),
        distance=float(row["distance"]),
        label=label,
        metadata=metadata,
        thumbnail=thumbnail,
    )


def _filters(
    categories: Sequence[str] | None,
    labels: Sequence[str] | None,
    exclude_ids: Sequence[str] | None,
) -> dict[str, list[str]]:
    given = {"categories": categories, "labels": labels, "exclude_ids": exclude_ids}
    return {name: [str(v) for v in values] for name, values in given.items() if values}


class SimrecClient:
    """A connection to one simrec server (`url` without the /invocations path).

    Batches above the server's limit (`max_batch_size`, else what its /version reports) are
    sent as several requests."""

    def __init__(
        self,
        url: str,
        token: str,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        max_batch_size: int | None = None,
    ):
        base = url.rstrip("/")
        base = base.removesuffix(INVOCATIONS)
        self._http = httpx.Client(
            base_url=base,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )
        self._batch_limit = max_batch_size

    def __enter__(self) -> SimrecClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def healthy(self) -> bool:
        try:
            return self._http.get("/ping").status_code == 200
        except httpx.HTTPError:
            return False

    def similar(
        self,
        image: ImageInput,
        k: int = 5,
        thumbnails: bool = True,
        categories: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        exclude_ids: Sequence[str] | None = None,
    ) -> list[SimilarItem]:
        """The k catalog items most similar to `image` (bytes, a file path or a PIL image),
        among the `categories` / `labels` given and never one of `exclude_ids`."""
        return self.similar_batch([image], k, thumbnails, categories, labels, exclude_ids)[0]

    def similar_to_item(
        self,
        item_id: str,
        k: int = 5,
        thumbnails: bool = True,
        categories: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        exclude_ids: Sequence[str] | None = None,
    ) -> list[SimilarItem]:
        """The k catalog items most similar to catalog item `item_id` (never itself)."""
        filters = _filters(categories, labels, exclude_ids)
        rows = [{"item_id": str(item_id), "k": k}]
        return self._similar(rows, thumbnails, filters)[0]

    def similar_batch(
        self,
        images: Sequence[ImageInput],
        k: int = 5,
        thumbnails: bool = True,
        categories: Sequence[str] | None = None,
        labels: Sequence[str] | None = None,
        exclude_ids: Sequence[str] | None = None,
    ) -> list[list[SimilarItem]]:
        """Several query images, one result list per image, in order; as many requests as
        the server's batch limit needs."""
        payloads = [base64.b64encode(image_bytes(image)).decode("ascii") for image in images]
        rows = [{"image": payload, "k": k} for payload in payloads]
        return self._similar(rows, thumbnails, _filters(categories, labels, exclude_ids))

    def batch_limit(self) -> int | None:
        """The server's queries-per-request limit (from /version), None when it says none."""
        if self._batch_limit is None:
            try:
                response = self._http.get(VERSION)
                limits = response.json().get("limits", {}) if response.status_code == 200 else {}
                self._batch_limit = int(limits.get("max_batch_size", 0))
            except (httpx.HTTPError, ValueError, AttributeError, TypeError):
                self._batch_limit = 0
        return self._batch_limit or None

    def _similar(
        self, rows: list[dict[str, Any]], thumbnails: bool, filters: dict[str, list[str]]
    ) -> list[list[SimilarItem]]:
        limit = self.batch_limit() or max(len(rows), 1)
        results: list[list[SimilarItem]] = []
        for start in range(0, len(rows), limit):
            chunk = rows[start : start + limit]
            request = {
                "dataframe_records": chunk,
                "params": {"thumbnails": thumbnails, **filters},
            }
            found: list[list[SimilarItem]] = [[] for _ in chunk]
            for row in self._invoke(request)["predictions"]:
                found[int(row["query"])].append(_item(row))
            results.extend(sorted(items, key=lambda item: item.rank) for items in found)
        return results

    def predict(
        self, records: list[dict[str, Any]], params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Any served model's raw output rows for `dataframe_records` input (e.g. simrec-style,
        whose rows carry `categories`); raises the same errors as `similar`."""
        request: dict[str, Any] = {"dataframe_records": records}
        if params:
            request["params"] = params
        return self._invoke(request)["predictions"]

    def _invoke(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            response = self._http.post(INVOCATIONS, json=request)
        except httpx.TimeoutException as error:
            raise ServerUnavailableError(
                f"{self._http.base_url} did not answer in time: {error}"
            ) from error
        except httpx.TransportError as error:
            raise ServerUnavailableError(f"cannot reach {self._http.base_url}: {error}") from error
        if response.status_code == 200:
            return response.json()
        try:
            payload = response.json()
            error_code, message = payload.get("error_code", ""), payload.get("message", "")
        except ValueError:
            error_code, message = "", response.text
        if response.status_code == 401:
            raise AuthenticationError(f"the server refused the token: {message}")
        if response.status_code < 500:
            raise RequestRejectedError(response.status_code, error_code, message)
        raise ServerError(f"HTTP {response.status_code} from the server: {message}")
