"""The authenticated REST server: MLflow's FastAPI scoring app behind an ASGI guard.

The guard requires `Authorization: Bearer <token>` on everything except /ping, /health and
/version, limits the body size, takes JSON only, rejects what MLflow would accept silently or
answer with a 500 (extra columns, non-integer k, a missing content type), and turns every
error response into `{"error_code", "message"}` JSON without MLflow's server-side stack trace.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel
from mlflow.types.schema import DataType, Schema

from simrec.config import ServingSettings
from simrec.serving.contract import RequestRows
from simrec.serving.limits import LimitError, RequestLimits, check_budget, drain, parse_json
from simrec.serving.shutdown import run_until_terminated
from simrec.serving.tokens import TokenError

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/ping", "/health", "/version"})
INVOCATIONS = "/invocations"
CHECKED_REQUEST = "simrec.checked_request"  # scope key: what the guard read, for the model
REQUEST_FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")
JSON_TYPE = "application/json"
MAX_MESSAGE_CHARS = 2000
_INTEGER_TYPES = (DataType.integer, DataType.long)
_STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "REQUEST_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    504: "TIMEOUT",
}
# MLflow wraps a model's own error message in a repr of the whole input frame.
_PREDICT_PREFIX = re.compile(r"^Failed to predict data '.*?'\. \nError: ", re.S)


@dataclass(frozen=True)
class CheckedRequest:
    """A plain request the guard read and checked: its rows and its raw params."""

    rows: RequestRows
    params: dict[str, Any] | None


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    code = code or _STATUS_CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR")
    return json.dumps({"error_code": code, "message": message[:MAX_MESSAGE_CHARS]}).encode()


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", JSON_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_json_error(
    send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send_json(send, status, error_body(status, message), headers)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _describe_schema(schema: Schema) -> str:
    return ", ".join(
        f"{spec.name} ({spec.type.name}, {'required' if spec.required else 'optional'})"
        for spec in schema.inputs
    )


def _columns(parsed: Any) -> dict[str, list[Any]] | None:
    """Column name → values of a parsed request, or None when it has no named columns."""
    if isinstance(parsed, pd.DataFrame):
        if parsed.columns.has_duplicates:
            repeated = sorted({str(c) for c in parsed.columns[parsed.columns.duplicated()]})
            raise RequestError(400, f"the request repeats the column(s) {repeated}")
        return {str(column): parsed[column].tolist() for column in parsed.columns}
    if isinstance(parsed, dict):
        columns = {}
        for name, values in parsed.items():
            values = values.tolist() if hasattr(values, "tolist") else values
            columns[str(name)] = values if isinstance(values, list) else [values]
        return columns
    return None


def _plain_value(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    )


def plain_rows(request_format: str, payload: Any) -> RequestRows | None:
    """The rows of a `dataframe_split` or `dataframe_records` request whose every value is a
    string or an int64 (what a client sends), read straight from the JSON: MLflow's parsing
    would turn them into a DataFrame holding the same values. None for anything else, which
    then goes through MLflow's parsing."""
    if request_format == "dataframe_split":
        if not isinstance(payload, dict) or set(payload) != {"columns", "data"}:
            return None
        columns, data = payload["columns"], payload["data"]
        if not isinstance(columns, list) or not isinstance(data, list):
            return None
        if not all(isinstance(c, str) for c in columns) or len(set(columns)) != len(columns):
            return None
        records = []
        for row in data:
            if not isinstance(row, list) or len(row) != len(columns):
                return None
            if not all(_plain_value(value) for value in row):
                return None
            records.append(dict(zip(columns, row, strict=True)))
        return RequestRows(tuple(columns), records)
    if request_format == "dataframe_records":
        if not isinstance(payload, list) or not payload or not isinstance(payload[0], dict):
            return None
        columns = tuple(payload[0])
        for record in payload:
            if not isinstance(record, dict) or tuple(record) != columns:
                return None
            if not all(_plain_value(value) for value in record.values()):
                return None
        return RequestRows(columns, payload)
    return None


def check_invocation(
    body: bytes, schema: Schema | None, limits: RequestLimits | None = None
) -> CheckedRequest | None:
    """Reject a JSON scoring request that MLflow would misread, with a message saying why.

    Parsing is MLflow's own (`infer_and_parse_data`), so the formats stay exactly MLflow's;
    a plain request (`plain_rows`) is read without it, and comes back checked, for the model
    to parse without reading the JSON again.
    """
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    try:
        request = parse_json(body)
    except LimitError as error:
        raise RequestError(error.status, error.message) from None
    if not isinstance(request, dict):
        raise RequestError(
            400, f"the request must be a JSON object with one of the keys {list(REQUEST_FORMATS)}"
        )
    formats = [key for key in request if key in REQUEST_FORMATS]
    unknown_keys = [key for key in request if key not in REQUEST_FORMATS and key != "params"]
    if len(formats) != 1 or unknown_keys:
        raise RequestError(
            400,
            f"the request must hold exactly one of {list(REQUEST_FORMATS)} (and optionally "
            f"'params'); got keys {list(request)}",
        )
    if "params" in request and not isinstance(request["params"], dict):
        raise RequestError(400, "'params' must be a JSON object")
    if schema is None or not schema.has_input_names():
        return None
    rows = plain_rows(formats[0], request[formats[0]])
    if rows is not None:
        columns = {name: [record[name] for record in rows.records] for name in rows.columns}
    else:
        try:
            parsed = infer_and_parse_data({formats[0]: request[formats[0]]})
        except MlflowException as error:
            raise RequestError(400, error.message) from None
        columns = _columns(parsed)
    expected = f"this model takes {_describe_schema(schema)}"
    if columns is None:
        raise RequestError(400, f"the request has no named columns; {expected}")
    names = schema.input_names()
    unknown = [name for name in columns if name not in names]
    missing = [name for name in schema.required_input_names() if name not in columns]
    if unknown or missing:
        problems = [f"unknown column(s) {unknown}"] if unknown else []
        problems += [f"missing column(s) {missing}"] if missing else []
        raise RequestError(400, f"{' and '.join(problems)}; {expected}")
    for spec in schema.inputs:
        if spec.type in _INTEGER_TYPES and spec.name in columns:
            for row, value in enumerate(columns[spec.name]):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise RequestError(
                        400,
                        f"column {spec.name!r} must hold integers, got {value!r} in row {row}"
                        + ("" if spec.required else " (or leave the column out)"),
                    )
                if not -(2**63) <= value < 2**63:
                    raise RequestError(
                        400, f"column {spec.name!r}: {value} in row {row} is out of range"
                    )
    if limits is not None:
        try:
            check_budget(columns, limits)
        except LimitError as error:
            raise RequestError(error.status, error.message) from None
    return None if rows is None else CheckedRequest(rows, request.get("params"))


def _clean_error(status: int, body: bytes) -> bytes:
    """MLflow's error response as `{"error_code", "message"}`: no stack trace, no input dump."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and "message" in payload:
        message = _PREDICT_PREFIX.sub("", str(payload["message"]), count=1)
        return error_body(status, message, payload.get("error_code"))
    text = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    return error_body(status, text)


def _kept_headers(start: Message) -> list[tuple[bytes, bytes]]:
    """Headers of an error response that survive its cleaning (Retry-After, model version)."""
    return [
        (key, value)
        for key, value in start.get("headers", [])
        if key.lower() == b"retry-after" or key.lower().startswith(b"x-simrec-")
    ]


class GuardedApp:
    """ASGI wrapper: bearer-token auth, body-size limit, request checks, clean JSON errors."""

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        max_body_bytes: int,
        input_schema: Schema | None = None,
        limits: RequestLimits | None = None,
        max_drain_bytes: int = 0,
        open_paths: frozenset[str] = OPEN_PATHS,
        inline_check_bytes: int = 0,
    ):
        if not token:
            raise TokenError("an API token is required")
        self.app = app
        self.open_paths = open_paths
        self._token = token.encode()
        self.max_body_bytes = max_body_bytes
        self.input_schema = input_schema
        self.limits = limits
        self.max_drain_bytes = max_drain_bytes
        self.inline_check_bytes = inline_check_bytes

    def _authorized(self, scope: Scope) -> bool:
        header = _header(scope, b"authorization") or ""
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Constant time: a wrong token takes as long to reject as a nearly right one.
        return hmac.compare_digest(presented.strip().encode("latin-1"), self._token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # websockets: nothing here speaks them
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["path"] not in self.open_paths and not self._authorized(scope):
            await send_json_error(
                send,
                401,
                "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                [(b"www-authenticate", b'Bearer realm="simrec"')],
            )
            return
        try:
            body = await self._read_body(scope, receive)
            if scope["path"] == INVOCATIONS and scope["method"] == "POST":
                await self._check(scope, body)
        except RequestError as error:
            headers = [(b"connection", b"close")] if error.status == 413 else None
            await send_json_error(send, error.status, error.message, headers)
            return
        await self._forward(scope, body, receive, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        too_large = RequestError(
            413, f"the request body exceeds the limit of {self.max_body_bytes} bytes"
        )
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await drain(receive, self.max_drain_bytes)
            raise too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                if message.get("more_body", False):
                    await drain(receive, self.max_drain_bytes - size)
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _check(self, scope: Scope, body: bytes) -> None:
        content_type = _header(scope, b"content-type") or ""
        if content_type.split(";")[0].strip().lower() != JSON_TYPE:
            # MLflow would also take CSV and parquet, but not check their columns.
            raise RequestError(
                415,
                f"send Content-Type: {JSON_TYPE} with one of {list(REQUEST_FORMATS)}; "
                f"got {content_type or 'no Content-Type'!r}",
            )
        # JSON parsing of a large body should not stall the event loop; a small one costs
        # less than the hand-over to a thread and back.
        try:
            if len(body) <= self.inline_check_bytes:
                checked = check_invocation(body, self.input_schema, self.limits)
            else:
                checked = await asyncio.to_thread(
                    check_invocation, body, self.input_schema, self.limits
                )
        except RequestError:
            raise
        except Exception as error:  # any JSON shape gets an answer, never a crash in here
            log.info("request refused by an unexpected check failure: %r", error)
            raise RequestError(
                400, f"the request could not be read as {list(REQUEST_FORMATS)}: {error!r}"
            ) from None
        if checked is not None:
            scope[CHECKED_REQUEST] = checked

    async def _forward(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        held: Message | None = None
        held_body: list[bytes] = []
        started = False

        async def clean_errors(message: Message) -> None:
            nonlocal held, started
            if message["type"] == "http.response.start":
                if message["status"] >= 400:
                    held = message
                    return
                started = True
            elif message["type"] == "http.response.body" and held is not None:
                held_body.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                status, kept = held["status"], _kept_headers(held)
                held, started = None, True
                await send_json(send, status, _clean_error(status, b"".join(held_body)), kept)
                return
            await send(message)

        try:
            await self.app(scope, replay, clean_errors)
        except Exception:
            log.exception("unhandled error answering %s %s", scope["method"], scope["path"])
            if not started:
                await send_json_error(send, 500, "internal error; see the server log")


def create_app(
    model: PyFuncModel,
    token: str,
    max_body_bytes: int,
    serving: ServingSettings | None = None,
    model_uri: str | None = None,
    limits: RequestLimits | None = None,
    max_drain_bytes: int | None = None,
) -> GuardedApp:
    """`model` (a loaded pyfunc, or the URI to load and follow) behind simrec's endpoints
    (`simrec.serving.endpoints`: micro-batching, /health, /version, /metrics), MLflow's
    scoring app and the guard. `serving` defaults to the configuration's, and so does
    `max_drain_bytes` (`serving.max_drain_bytes`)."""
    from simrec.serving.endpoints import build_serving_app

    if serving is None:
        from simrec.config import load_settings

        serving = load_settings().serving
    if max_drain_bytes is None:
        max_drain_bytes = serving.max_drain_bytes
    app = build_serving_app(model, serving, model_uri)
    open_paths = OPEN_PATHS | ({"/metrics"} if serving.metrics_open else set())
    guarded = GuardedApp(
        app,
        token,
        max_body_bytes,
        app.live.current.pyfunc.metadata.get_input_schema(),
        limits,
        max_drain_bytes,
        frozenset(open_paths),
        serving.guard_inline_bytes,
    )
    guarded.serving_app = app
    return guarded


def serve(
    model_uri: str,
    token: str,
    host: str,
    port: int,
    max_body_bytes: int,
    log_level: str = "info",
    serving: ServingSettings | None = None,
    limits: RequestLimits | None = None,
    max_drain_bytes: int | None = None,
    shutdown_seconds: float | None = None,
) -> None:
    """Load `model_uri` and serve it until interrupted (blocking); a `models:/NAME@ALIAS`
    URI is followed as the alias moves (`serving.reload_seconds`); on SIGTERM, exit within
    `shutdown_seconds` (None: wait for in-flight work, uvicorn's default)."""
    import uvicorn

    from simrec.serving.resources import batch_workers, size_tensorflow_threads, threads_per_call

    if serving is None:
        from simrec.config import load_settings

        serving = load_settings().serving
    # Before the model loads TensorFlow.
    workers = batch_workers(serving.batch_workers)
    size_tensorflow_threads(threads_per_call(serving.tensorflow_threads, workers))
    app = create_app(
        None,
        token,
        max_body_bytes,
        serving,
        model_uri,
        limits=limits,
        max_drain_bytes=max_drain_bytes,
    )
    log.info("serving %s on http://%s:%d", model_uri, host, port)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level)
    run_until_terminated(config, shutdown_seconds)
