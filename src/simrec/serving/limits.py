"""Request limits the guard enforces before a model sees a request: strict JSON parsing (any
shape gets an answer, never a crash), and a per-request compute budget (rows × image pixels)
that holds for every served model alike.

Only image *headers* are read here: the pixel count of each query image is known before any
pixel is decoded, so an expensive request is refused at the cost of a cheap one.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from simrec.images import ImageTooLargeError, InvalidImageError, image_pixels

IMAGE_COLUMN = "image"
_DATA_URL_PREFIX = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(rb"\s+")


class LimitError(ValueError):
    """A request the guard refuses, with its HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RequestLimits:
    """What one request may cost; built from `serving.*` settings."""

    max_rows: int
    max_image_pixels: int
    max_request_pixels: int
    image_formats: tuple[str, ...]

    @classmethod
    def from_settings(cls, serving: Any) -> RequestLimits:
        return cls(
            max_rows=serving.max_batch_size,
            max_image_pixels=serving.max_image_pixels,
            max_request_pixels=serving.max_request_pixels,
            image_formats=tuple(serving.image_formats),
        )


def _no_repeated_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        # json.loads would silently keep the last one: the request would mean something else
        # than what the client (or a proxy that read the first one) thinks it means.
        raise LimitError(400, f"the request repeats the JSON name(s) {repeated}")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise LimitError(400, f"the request holds {name}, which is not JSON")


def parse_json(body: bytes) -> Any:
    """The JSON value of `body` (UTF-8 only, no repeated names, no NaN/Infinity), or LimitError."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise LimitError(400, f"the request body is not valid JSON: not UTF-8 ({error})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_repeated_names, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise LimitError(400, f"the request body is not valid JSON: {error}") from None
    except RecursionError:
        raise LimitError(400, "the request body is not valid JSON: nested too deeply") from None


def query_image_bytes(text: str) -> bytes | None:
    """The bytes of a base64 (or data-URL) image string; None if it is not base64."""
    payload = _WHITESPACE.sub(
        b"", _DATA_URL_PREFIX.sub("", text, count=1).encode("ascii", "replace")
    )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None


def check_budget(columns: dict[str, Sequence[Any]], limits: RequestLimits) -> None:
    """Refuse a request with more rows, or more image pixels in all, than the limits allow.

    Rows whose image is not readable are left to the model, which names the problem.
    """
    rows = max((len(values) for values in columns.values()), default=0)
    if rows > limits.max_rows:
        raise LimitError(
            400, f"{rows} queries in one request; the limit is {limits.max_rows} per request"
        )
    total = 0
    for row, text in enumerate(columns.get(IMAGE_COLUMN, [])):
        payload = query_image_bytes(text) if isinstance(text, str) else None
        if not payload:
            continue
        try:
            pixels = image_pixels(
                payload, f"image {row}", limits.max_image_pixels, limits.image_formats
            )
        except ImageTooLargeError as error:
            raise LimitError(400, str(error)) from None
        except InvalidImageError:
            continue
        total += pixels
        if total > limits.max_request_pixels:
            raise LimitError(
                400,
                f"the images of this request hold more than {limits.max_request_pixels} "
                f"pixels in all (the budget per request, reached at image {row}); send fewer "
                "or smaller images",
            )


async def drain(receive: Any, max_bytes: int) -> None:
    """Read and discard the rest of a request body, up to `max_bytes`, so that a client still
    sending it reads the answer instead of a connection reset."""
    drained = 0
    while drained <= max_bytes:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return
        drained += len(message.get("body", b""))
