"""The request contract of every simrec served model (fashion and `simrec-style`).

A request is a DataFrame, one row per query. Each row names its query by exactly one of

- `image`: base64 of a PNG/JPEG of any size or mode, or
- `item_id`: a catalog item, searched with its stored vector (no image decode); the item
  itself is never among its own results,

and optionally `k` (results; per category for the style model), and filters, given per row
(comma-separated strings) or for every row in `params` (lists):

- `categories` / `labels`: keep only items of these (a row's value wins over `params`),
- `exclude_ids`: never return these items (the row's and the params' lists both apply).

Validation is shared: the same column rules, limits (`max_batch_size`, image pixels, k) and
typed messages, raised as `InvalidQueryError` (HTTP 400) naming what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema
from pydantic import BaseModel, ConfigDict

from simrec.images import InvalidImageError, open_image, to_array

IMAGE_COLUMN = "image"
ITEM_ID_COLUMN = "item_id"
K_COLUMN = "k"
CATEGORIES = "categories"
LABELS = "labels"
EXCLUDE_IDS = "exclude_ids"
KEEP_FILTERS = (CATEGORIES, LABELS)
FILTERS = (*KEEP_FILTERS, EXCLUDE_IDS)
QUERY_COLUMNS = (IMAGE_COLUMN, ITEM_ID_COLUMN)
COLUMNS = (*QUERY_COLUMNS, K_COLUMN, *FILTERS)
THUMBNAILS_PARAM = "thumbnails"
PARAMS = (*FILTERS, THUMBNAILS_PARAM)
MAX_LISTED_PROBLEMS = 5
_DATA_URL_PREFIX = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(rb"\s+")


class InvalidQueryError(MlflowException):
    """A request the model cannot answer; MLflow's scoring server turns it into a 400."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class RequestLimits(BaseModel):
    """What one request may ask for (from `serving.*` and `recommend.*`/`style.*`)."""

    model_config = ConfigDict(extra="ignore")

    default_k: int
    max_k: int
    max_batch_size: int
    max_image_pixels: int
    # Pillow formats the decoder may try; None (bundles logged before the allow-list was
    # recorded): serving.image_formats of the configuration.
    image_formats: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Query:
    """One validated query row."""

    position: int  # row in its request
    k: int
    pixels: np.ndarray | None = None  # decoded image (size, size, channels) uint8
    payload: bytes | None = None  # the image's bytes (to recognise a catalog photo)
    item_id: str | None = None
    categories: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    exclude_ids: frozenset[str] = field(default_factory=frozenset)

    @property
    def keep(self) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
        """The keep-filters, as a key: queries sharing it share one filtered search."""
        return self.categories, self.labels

    def excluded(self) -> frozenset[str]:
        """Items never to return: the exclusions, and the queried item itself."""
        return self.exclude_ids | {self.item_id} if self.item_id else self.exclude_ids


@dataclass(frozen=True)
class ParsedRequest:
    queries: list[Query]
    thumbnails: bool = True


@dataclass(frozen=True)
class RequestRows:
    """A request's rows as plain values (column name → value per row), what the server's
    guard already read from the JSON: the contract checks them as it checks a DataFrame's,
    without building one."""

    columns: tuple[str, ...]
    records: list[dict[str, Any]]


def request_schema() -> Schema:
    """The input signature both models declare (every column optional: the contract checks
    that each row names its query)."""
    return Schema(
        [
            ColSpec("string", IMAGE_COLUMN, required=False),
            ColSpec("string", ITEM_ID_COLUMN, required=False),
            ColSpec("long", K_COLUMN, required=False),
            *(ColSpec("string", name, required=False) for name in FILTERS),
        ]
    )


def params_schema(thumbnails: bool = True) -> ParamSchema:
    specs = [ParamSpec(name, "string", [], (-1,)) for name in FILTERS]
    return ParamSchema([*specs, ParamSpec(THUMBNAILS_PARAM, "boolean", thumbnails)])


def listing(problems: Sequence[str]) -> str:
    shown = "; ".join(problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    return shown + (f"; and {more} more" if more > 0 else "")


def decode_image(
    text: object,
    position: int,
    max_pixels: int,
    size: int,
    channels: int,
    formats: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, bytes]:
    """One base64 image string → (uint8 pixels (size, size, channels), the image's bytes);
    InvalidImageError naming the row otherwise."""
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
    image = open_image(image_bytes, source, max_pixels, formats)
    try:
        return to_array(image, size, channels), image_bytes
    except (OSError, ValueError) as error:
        raise InvalidImageError(f"{source}: cannot convert {image.mode} image ({error})") from error


def _missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _names(value: object, what: str, position: int | None) -> tuple[str, ...] | None:
    """A filter value (comma-separated string or list of strings) as names; None if absent."""
    where = f" in row {position}" if position is not None else " in params"
    if _missing(value):
        return None
    if isinstance(value, str):
        names = [part.strip() for part in value.split(",")]
    elif isinstance(value, list | tuple | np.ndarray):
        names = [str(part).strip() for part in value]
    else:
        raise InvalidQueryError(
            f"{what}{where} must be a comma-separated string or a list, got {value!r}"
        )
    names = [name for name in names if name]
    return tuple(dict.fromkeys(names)) or None


def _k(value: object, position: int, limits: RequestLimits) -> int:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        value = int(value)
    if not isinstance(value, int | np.integer) or isinstance(value, bool | np.bool_):
        raise InvalidQueryError(f"k in row {position} must be an integer, got {value!r}")
    if not 1 <= value <= limits.max_k:
        raise InvalidQueryError(
            f"k in row {position} must be from 1 to {limits.max_k}, got {value}"
        )
    return int(value)


def parse_request(
    model_input: object,
    params: Mapping[str, Any] | None,
    limits: RequestLimits,
    image_size: int,
    channels: int,
    filter_values: Mapping[str, Collection[str]],
    item_ids: Collection[str],
) -> ParsedRequest:
    """Validate a request against the contract; `filter_values` maps each keep-filter the
    model offers (`categories`, `labels`) to its known values, `item_ids` are the items a
    query may name. Raises InvalidQueryError listing every problem found."""
    if isinstance(model_input, RequestRows):
        columns, records = list(model_input.columns), model_input.records
    elif isinstance(model_input, pd.DataFrame):
        columns = [str(column) for column in model_input.columns]
        records = None
    else:
        raise InvalidQueryError(
            f"expected a DataFrame with a column {IMAGE_COLUMN!r} or {ITEM_ID_COLUMN!r}, got "
            f"{type(model_input).__name__}"
        )
    unknown = [column for column in columns if column not in COLUMNS]
    if unknown or not any(column in columns for column in QUERY_COLUMNS):
        raise InvalidQueryError(
            f"expected a column {IMAGE_COLUMN!r} (base64 image) or {ITEM_ID_COLUMN!r} (catalog "
            f"item), optionally {K_COLUMN!r} (integer) and filters {list(FILTERS)}; got {columns}"
        )
    rows = len(records) if records is not None else len(model_input)
    if rows == 0:
        raise InvalidQueryError("the request holds no queries: send at least one row")
    if rows > limits.max_batch_size:
        raise InvalidQueryError(
            f"{rows} queries in one request; the limit is {limits.max_batch_size}"
        )
    params = dict(params or {})
    defaults = {name: _names(params.get(name), name, None) for name in FILTERS}
    problems: list[str] = []
    queries = []
    if records is None:
        records = model_input.to_dict(orient="records")
    for position, record in enumerate(records):
        try:
            queries.append(
                _query(
                    record,
                    position,
                    defaults,
                    limits,
                    image_size,
                    channels,
                    filter_values,
                    item_ids,
                )
            )
        except (InvalidQueryError, InvalidImageError) as error:
            problems.append(error.message if isinstance(error, MlflowException) else str(error))
    if problems:
        raise InvalidQueryError(listing(problems))
    thumbnails = params.get(THUMBNAILS_PARAM, True)
    return ParsedRequest(queries, bool(True if thumbnails is None else thumbnails))


def _query(
    record: dict[str, Any],
    position: int,
    defaults: dict[str, tuple[str, ...] | None],
    limits: RequestLimits,
    image_size: int,
    channels: int,
    filter_values: Mapping[str, Collection[str]],
    item_ids: Collection[str],
) -> Query:
    image, item_id = record.get(IMAGE_COLUMN), record.get(ITEM_ID_COLUMN)
    has_image, has_item = not _missing(image), not _missing(item_id)
    if has_image == has_item:
        raise InvalidQueryError(
            f"row {position} must give exactly one of {IMAGE_COLUMN!r} or {ITEM_ID_COLUMN!r}, "
            f"got {'both' if has_image else 'neither'}"
        )
    k_value = record.get(K_COLUMN)
    k = limits.default_k if _missing(k_value) else _k(k_value, position, limits)
    keep: dict[str, tuple[str, ...] | None] = {}
    for name in KEEP_FILTERS:
        names = _names(record.get(name), name, position) or defaults[name]
        if names is not None:
            if name not in filter_values:
                offered = [n for n in KEEP_FILTERS if n in filter_values] or "no"
                raise InvalidQueryError(
                    f"row {position}: this model cannot filter by {name}; it offers {offered} "
                    f"filters and {EXCLUDE_IDS!r}"
                )
            known = filter_values[name]
            strange = [value for value in names if value not in known]
            if strange:
                raise InvalidQueryError(
                    f"row {position}: unknown {name} {strange}; known: {sorted(known)}"
                )
        keep[name] = names
    excluded = (_names(record.get(EXCLUDE_IDS), EXCLUDE_IDS, position) or ()) + (
        defaults[EXCLUDE_IDS] or ()
    )
    query = Query(
        position,
        k,
        categories=keep[CATEGORIES],
        labels=keep[LABELS],
        exclude_ids=frozenset(excluded),
    )
    if has_item:
        if not isinstance(item_id, str | int | np.integer):
            raise InvalidQueryError(
                f"row {position}: {ITEM_ID_COLUMN} must be a string, got {item_id!r}"
            )
        item_id = str(item_id).strip()
        if item_id not in item_ids:
            raise InvalidQueryError(f"row {position}: unknown item_id {item_id!r}")
        return replace(query, item_id=item_id)
    formats = limits.image_formats
    pixels, payload = decode_image(
        image, position, limits.max_image_pixels, image_size, channels, formats
    )
    return replace(query, pixels=pixels, payload=payload)
