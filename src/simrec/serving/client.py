"""What shops call: `SimrecClient(url, token).similar(image, k=5)` against `simrec serve`.

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


class SimrecClient:
    """A connection to one simrec server (`url` without the /invocations path)."""

    def __init__(
        self,
        url: str,
        token: str,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        base = url.rstrip("/")
        base = base.removesuffix(INVOCATIONS)
        self._http = httpx.Client(
            base_url=base,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

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

    def similar(self, image: ImageInput, k: int = 5, thumbnails: bool = True) -> list[SimilarItem]:
        """The k catalog items most similar to `image` (bytes, a file path or a PIL image)."""
        return self.similar_batch([image], k, thumbnails)[0]

    def similar_batch(
        self, images: Sequence[ImageInput], k: int = 5, thumbnails: bool = True
    ) -> list[list[SimilarItem]]:
        """One request for several query images; one result list per image, in order."""
        payloads = [base64.b64encode(image_bytes(image)).decode("ascii") for image in images]
        request = {
            "dataframe_split": {"columns": ["image", "k"], "data": [[p, k] for p in payloads]},
            "params": {"thumbnails": thumbnails},
        }
        rows = self._invoke(request)["predictions"]
        results: list[list[SimilarItem]] = [[] for _ in images]
        for row in rows:
            results[int(row["query"])].append(_item(row))
        return [sorted(items, key=lambda item: item.rank) for items in results]

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
