"""The server's own endpoints, in front of MLflow's scoring app (behind the guard):

- `POST /invocations` for simrec's models: queued for the micro-batcher, whose worker
  parses each request (MLflow's JSON parsing, the request contract) and answers many at
  once; 503 + Retry-After at once when its queue is full, 504 when the request waited past
  `request_timeout_s`. Other models go to MLflow's app unchanged.
- `/ping` liveness; `/health` readiness (the cached real self-query; 503 otherwise);
  `/version` the registered name, version, alias, lineage and request limits; `/metrics`
  Prometheus text.

Every response carries the version of the model that answered (`X-Simrec-Model-Version`).
"""

from __future__ import annotations

import json
import logging
import time
from io import StringIO
from typing import Any

import anyio
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel

from simrec.config import ServingSettings
from simrec.serving.batching import MicroBatcher, QueueFullError, RequestTimeoutError
from simrec.serving.live_model import LiveModel, LoadedModel, load_model, wrap_model
from simrec.serving.metrics import CONTENT_TYPE, ServingMetrics
from simrec.serving.server import (
    CHECKED_REQUEST,
    CheckedRequest,
    Message,
    Receive,
    Scope,
    Send,
    error_body,
    send_json,
)

log = logging.getLogger(__name__)

INVOCATIONS = "/invocations"
VERSION_HEADER = b"x-simrec-model-version"
NAME_HEADER = b"x-simrec-model-name"


def _model_headers(model: LoadedModel) -> list[tuple[bytes, bytes]]:
    headers = []
    if model.version is not None:
        headers.append((VERSION_HEADER, str(model.version).encode()))
    if model.name is not None:
        headers.append((NAME_HEADER, model.name.encode()))
    return headers


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def parse_invocation(model: LoadedModel, body: bytes) -> Any:
    """MLflow's own JSON parsing and params schema, then simrec's request contract (which
    checks every column and value itself, so MLflow's slower frame schema enforcement is
    not repeated)."""
    from mlflow.models.utils import _enforce_params_schema
    from mlflow.pyfunc.scoring_server import _parse_json_data

    metadata = model.pyfunc.metadata
    parsed = _parse_json_data(body, metadata, metadata.get_input_schema())
    params = _enforce_params_schema(parsed.params, metadata.get_params_schema())
    data = parsed.data
    if isinstance(data, dict):  # the `inputs` format: column name → values
        columns = {name: list(np.ravel(values)) for name, values in data.items()}
        if len({len(values) for values in columns.values()}) > 1:
            from simrec.serving.contract import InvalidQueryError

            lengths = {name: len(values) for name, values in columns.items()}
            raise InvalidQueryError(f"the columns of 'inputs' differ in length: {lengths}")
        data = pd.DataFrame(columns)
    return model.python_model.parse(data, params)


def parse_checked(model: LoadedModel, checked: CheckedRequest) -> Any:
    """`parse_invocation` of a request the guard already read (its plain rows)."""
    from mlflow.models.utils import _enforce_params_schema

    params = _enforce_params_schema(checked.params, model.pyfunc.metadata.get_params_schema())
    return model.python_model.parse(checked.rows, params)


def predictions_json(frame: Any) -> bytes:
    """`{"predictions": [records]}` as MLflow writes it, of a DataFrame or of result columns
    (column name → plain values, `answer_columns`)."""
    from mlflow.pyfunc.scoring_server import predictions_to_json

    if isinstance(frame, dict):
        names = list(frame)
        records = [dict(zip(names, row, strict=True)) for row in zip(*frame.values(), strict=True)]
        return json.dumps({"predictions": records}).encode()
    output = StringIO()
    predictions_to_json(frame, output)
    return output.getvalue().encode()


class ServingApp:
    """ASGI app: simrec's endpoints; anything else goes to the current model's MLflow app."""

    def __init__(
        self,
        live: LiveModel,
        batcher: MicroBatcher,
        metrics: ServingMetrics,
        request_timeout_s: float,
        retry_after_s: int,
        threads: int,
    ):
        self.live = live
        self.batcher = batcher
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self.retry_after_s = retry_after_s
        self.threads = threads
        self._sized = False

    def close(self) -> None:
        self.live.stop()
        self.batcher.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if not self._sized:  # the event loop's thread pool (the guard's JSON checks)
            anyio.to_thread.current_default_thread_limiter().total_tokens = self.threads
            self._sized = True
        model = self.live.current  # one model per request, whatever switches meanwhile
        path = scope["path"]
        counted = {"status": 500}

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                counted["status"] = message["status"]
                headers = [*message.get("headers", []), *_model_headers(model)]
                message = {**message, "headers": headers}
            await send(message)

        started = time.perf_counter()
        try:
            if path == "/ping":
                await send_json(send_with_version, 200, b"{}")
            elif path == "/health":
                await self._health(model, send_with_version)
            elif path == "/version":
                body = json.dumps(model.describe(), default=str).encode()
                await send_json(send_with_version, 200, body)
            elif path == "/metrics":
                await self._metrics(send_with_version)
            elif path == INVOCATIONS and scope["method"] == "POST" and model.batched:
                await self._invoke(model, scope.get(CHECKED_REQUEST), receive, send_with_version)
            else:
                await model.mlflow_app(scope, receive, send_with_version)
        finally:
            status = counted["status"]
            self.metrics.requests.labels(path if path in _KNOWN_PATHS else "other", status).inc()
            if path == INVOCATIONS:
                self.metrics.latency.labels(str(status)).observe(time.perf_counter() - started)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _health(self, model: LoadedModel, send: Send) -> None:
        if self.live.ready:
            body = json.dumps({"status": "ready", "version": model.version}).encode()
            await send_json(send, 200, body)
            return
        message = f"not ready: the model cannot answer a query ({self.live.last_error})"
        await send_json(send, 503, error_body(503, message, "NOT_READY"))

    async def _metrics(self, send: Send) -> None:
        self.metrics.queue_depth.set(self.batcher.depth)
        body = self.metrics.exposition()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", CONTENT_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _invoke(
        self, model: LoadedModel, checked: CheckedRequest | None, receive: Receive, send: Send
    ) -> None:
        arrived = time.monotonic()
        body = await _read_body(receive)
        if self.batcher.full:
            await self._overloaded(send)
            return

        def prepare(raw: bytes) -> Any:
            if checked is None:
                request = parse_invocation(model, raw)
            else:
                request = parse_checked(model, checked)
            self.metrics.request_rows.observe(len(request.queries))
            return request

        remaining = self.request_timeout_s - (time.monotonic() - arrived)
        try:
            answer = await self.batcher.submit(
                model.batch_model, body, 1, remaining, prepare=prepare, finish=predictions_json
            )
        except QueueFullError:
            await self._overloaded(send)
            return
        except RequestTimeoutError as error:
            self.metrics.rejected.labels("timeout").inc()
            await send_json(send, 504, error_body(504, str(error), "TIMEOUT"))
            return
        except MlflowException as error:
            await send_json(send, 400, error_body(400, error.message))
            return
        except Exception:
            await send_json(send, 500, error_body(500, "internal error; see the server log"))
            return
        await send_json(send, 200, answer)

    async def _overloaded(self, send: Send) -> None:
        self.metrics.rejected.labels("queue_full").inc()
        message = f"the server is busy; retry in {self.retry_after_s} s"
        await send_json(
            send,
            503,
            error_body(503, message, "OVERLOADED"),
            [(b"retry-after", str(self.retry_after_s).encode())],
        )


_KNOWN_PATHS = frozenset({"/ping", "/health", "/version", "/metrics", INVOCATIONS})


def build_serving_app(
    model: PyFuncModel | None, serving: ServingSettings, model_uri: str | None = None
) -> ServingApp:
    """The endpoints for `model` (already loaded) or `model_uri` (loaded here; followed when
    it names a registry alias), with their batcher, metrics and readiness checker running."""
    from simrec.serving.resources import available_cpus, batch_workers, threads_per_call

    metrics = ServingMetrics()
    loaded = load_model(model_uri) if model is None else wrap_model(model, model_uri or "")
    workers = batch_workers(serving.batch_workers)
    search_threads = threads_per_call(serving.batch_search_threads, workers)
    loaded.use_search_threads(search_threads)

    def switched(current: LoadedModel) -> None:
        metrics.reloads.inc()
        _publish(metrics, current)

    live = LiveModel(
        loaded,
        health_interval_s=serving.health_interval_s,
        reload_seconds=serving.reload_seconds,
        on_switch=switched,
        on_health=lambda ready: metrics.ready.set(1 if ready else 0),
        prepare=lambda candidate: candidate.use_search_threads(search_threads),
    )
    _publish(metrics, loaded)
    batcher = MicroBatcher(
        serving.batch_max_rows,
        serving.batch_max_wait_ms / 1000,
        serving.queue_max_requests,
        on_batch=metrics.record_batch,
        workers=workers,
        adaptive_wait=serving.batch_wait_adaptive,
    )
    live.start()
    return ServingApp(
        live,
        batcher,
        metrics,
        serving.request_timeout_s,
        serving.retry_after_s,
        threads=available_cpus(),
    )


def _publish(metrics: ServingMetrics, model: LoadedModel) -> None:
    metrics.serving(
        model.name or "",
        str(model.version or ""),
        model.alias or "",
        model.index_size,
        model.loaded_at,
    )
