"""Server-side micro-batching: concurrent requests coalesced into one model call.

Requests are queued, then validated one by one on the worker thread (`prepare`, so a bad
image fails only its own request); the worker takes the queue's head, waits up to
`max_wait_s` for more requests while the batch holds fewer than `max_rows` rows (requests
that arrive while the model is busy queue up meanwhile), and answers them all with one `answer` call
(one embedding batch, one search per filter). Should that call fail, each request of the
batch is answered on its own, so an error stays with the request that caused it.

The queue is bounded: `submit` raises `QueueFullError` at once when it holds `max_requests`
(the server answers 503 with Retry-After). A request whose deadline passed, or whose caller
gave up, is dropped before it reaches the model.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd

log = logging.getLogger(__name__)


_RUNNING: weakref.WeakSet[MicroBatcher] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Stop worker threads before the interpreter finalises (a daemon thread killed inside
    TensorFlow aborts the process)."""
    for batcher in list(_RUNNING):
        batcher.close()


class QueueFullError(Exception):
    """The model's queue is full: the caller should retry later."""


class RequestTimeoutError(Exception):
    """The request waited past its deadline and was never started."""


class BatchModel(Protocol):
    def answer(self, requests: list[Any]) -> list[pd.DataFrame]: ...


@dataclass(eq=False)
class _Entry:
    model: BatchModel
    request: Any  # what `prepare` turns into the model's request (else the request itself)
    rows: int
    deadline: float
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    prepare: Callable[[Any], Any] | None = None
    finish: Callable[[pd.DataFrame], Any] | None = None
    queued_at: float = field(default_factory=time.monotonic)

    def settle(self, result: pd.DataFrame | None, error: BaseException | None) -> None:
        def apply() -> None:
            if self.future.done():  # the caller gave up meanwhile
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        self.loop.call_soon_threadsafe(apply)


@dataclass
class BatchStats:
    """What a finished model call did (for metrics)."""

    requests: int
    rows: int
    seconds: float
    failed: bool


class MicroBatcher:
    """A bounded queue in front of the models and the worker thread that drains it."""

    def __init__(
        self,
        max_rows: int,
        max_wait_s: float,
        max_requests: int,
        on_batch: Callable[[BatchStats], None] | None = None,
        workers: int = 1,
    ):
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[_Entry | None] = queue.Queue(maxsize=max_requests)
        self._on_batch = on_batch
        self._local = threading.local()  # per worker: the entry that did not fit its batch
        self._stopped = threading.Event()
        # Several workers (one per CPU) parse and encode in parallel, each batching what it
        # takes from the one queue.
        self._workers = [
            threading.Thread(target=self._run, name=f"simrec-batcher-{n}", daemon=True)
            for n in range(workers)
        ]
        for worker in self._workers:
            worker.start()
        _RUNNING.add(self)

    @property
    def depth(self) -> int:
        """Requests waiting for the model."""
        return self._queue.qsize()

    @property
    def full(self) -> bool:
        return self._queue.full()

    async def submit(
        self,
        model: BatchModel,
        request: Any,
        rows: int,
        timeout_s: float,
        prepare: Callable[[Any], Any] | None = None,
        finish: Callable[[pd.DataFrame], Any] | None = None,
    ):
        """The answer of `model` to `request`, batched with concurrent ones.

        `prepare` (request → the model's request; its `queries` give the rows) and `finish`
        (answer → what the caller gets) run on the worker thread, so a request costs one
        hand-over between threads; an error in either fails only that request."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout_s
        entry = _Entry(model, request, rows, deadline, loop.create_future(), loop, prepare, finish)
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            raise QueueFullError(
                f"the server is busy: {self._queue.maxsize} requests already wait for the model"
            ) from None
        try:
            return await asyncio.wait_for(entry.future, timeout_s)
        except TimeoutError:
            raise RequestTimeoutError(
                f"no answer within {timeout_s:g} s; the request was dropped"
            ) from None

    def close(self) -> None:
        self._stopped.set()
        for _ in self._workers:
            with contextlib.suppress(queue.Full):  # a full queue wakes the workers anyway
                self._queue.put_nowait(None)
        for worker in self._workers:
            worker.join(timeout=5)

    # -- the worker ---------------------------------------------------------------------------
    def _next(self, timeout: float | None) -> _Entry | None:
        held = getattr(self._local, "held", None)
        if held is not None:
            self._local.held = None
            return held
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _live(self, entry: _Entry) -> bool:
        """False (and the entry settled) when its caller gave up or its deadline passed."""
        if entry.future.cancelled() or entry.future.done():
            return False
        if time.monotonic() > entry.deadline:
            entry.settle(None, RequestTimeoutError("the request timed out before it started"))
            return False
        return True

    def _collect(self) -> list[_Entry]:
        first = None
        while first is None and not self._stopped.is_set():
            first = self._next(timeout=None)
            if first is not None and not self._live(first):
                first = None
        if first is None:
            return []
        batch, rows = [first], first.rows
        closes = time.monotonic() + self.max_wait_s
        while rows < self.max_rows:
            # Past the wait, still take what is already queued (timeout 0 does not block).
            entry = self._next(timeout=max(closes - time.monotonic(), 0.0))
            if entry is None:
                break
            if not self._live(entry):
                continue
            if rows + entry.rows > self.max_rows:
                self._local.held = entry
                break
            batch.append(entry)
            rows += entry.rows
        return batch

    def _run(self) -> None:
        while not self._stopped.is_set():
            batch = self._collect()
            if batch:
                self._answer(batch)

    def _prepared(self, entry: _Entry) -> bool:
        if entry.prepare is None:
            return True
        try:
            entry.request = entry.prepare(entry.request)
        except Exception as error:
            entry.settle(None, error)
            return False
        entry.prepare = None
        entry.rows = len(getattr(entry.request, "queries", ())) or entry.rows
        return True

    def _chunks(self, entries: list[_Entry]) -> list[list[_Entry]]:
        """Consecutive groups of at most `max_rows` rows (a bigger request stays whole)."""
        chunks: list[list[_Entry]] = [[]]
        rows = 0
        for entry in entries:
            if chunks[-1] and rows + entry.rows > self.max_rows:
                chunks.append([])
                rows = 0
            chunks[-1].append(entry)
            rows += entry.rows
        return chunks

    def _settle(self, entry: _Entry, answer: pd.DataFrame) -> None:
        if entry.finish is None:
            entry.settle(answer, None)
            return
        try:
            entry.settle(entry.finish(answer), None)
        except Exception as error:
            log.exception("could not encode an answer")
            entry.settle(None, error)

    def _answer(self, batch: list[_Entry]) -> None:
        by_model: dict[int, list[_Entry]] = {}
        for entry in batch:  # after a registry switch old and new versions may share a batch
            if self._prepared(entry):
                by_model.setdefault(id(entry.model), []).append(entry)
        chunks = [chunk for group in by_model.values() for chunk in self._chunks(group)]
        for entries in chunks:
            started = time.monotonic()
            model = entries[0].model
            try:
                answers = model.answer([entry.request for entry in entries])
            except Exception:
                log.warning("a batch of %d requests failed; answering each alone", len(entries))
                self._report(entries, started, failed=True)
                for entry in entries:
                    self._answer_alone(entry)
                continue
            self._report(entries, started, failed=False)
            for entry, answer in zip(entries, answers, strict=True):
                self._settle(entry, answer)

    def _answer_alone(self, entry: _Entry) -> None:
        started = time.monotonic()
        try:
            answer = entry.model.answer([entry.request])[0]
        except Exception as error:
            log.exception("a request failed in the model")
            self._report([entry], started, failed=True)
            entry.settle(None, error)
            return
        self._report([entry], started, failed=False)
        self._settle(entry, answer)

    def _report(self, entries: list[_Entry], started: float, failed: bool) -> None:
        if self._on_batch is not None:
            rows = sum(entry.rows for entry in entries)
            self._on_batch(BatchStats(len(entries), rows, time.monotonic() - started, failed))
