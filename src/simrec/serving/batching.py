"""Server-side micro-batching: concurrent requests coalesced into one model call.

Requests are queued, then validated one by one on the worker thread as it takes them
(`prepare`, so a bad image fails only its own request, and is decoded while the next
requests are still arriving); the worker takes the queue's head, waits up to
`max_wait_s` for more requests while the batch holds fewer than `max_rows` rows (requests
that arrive while the model is busy queue up meanwhile), and answers them all with one `answer` call
(one embedding batch, one search per filter). Should that call fail, each request of the
batch is answered on its own, so an error stays with the request that caused it.

With `adaptive_wait` the worker waits only while its batch holds fewer requests than its
share of those in flight at once of late: eight clients, each sending its next request as
soon as its answer comes, are waited for (one model call instead of three); a lone client
never waits. One worker collects at a time; the answers of a batch go back to the event
loop in one hand-over. The server's default is one worker whose model calls use every CPU
(`serving.batch_workers`, `simrec.serving.resources.threads_per_call`).

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
PEAK_WINDOW_S = 1.0  # an adaptive wait expects as many requests as were in flight of late


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
        deliver([(self, result, error)])

    def apply(self, result: Any, error: BaseException | None) -> None:
        """On the caller's event loop: the answer (or error) to the waiting caller."""
        if self.future.done():  # the caller gave up meanwhile
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


Settled = tuple[_Entry, Any, BaseException | None]


def deliver(settled: list[Settled]) -> None:
    """Hand answers to their callers' event loops, one hand-over per loop for all of them:
    each `call_soon_threadsafe` writes to the loop's wake-up pipe (a system call and a
    wake-up), which cost as much CPU per request as the JSON encoding of its answer."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Settled]] = {}
    for item in settled:
        by_loop.setdefault(item[0].loop, []).append(item)
    for loop, items in by_loop.items():
        loop.call_soon_threadsafe(_apply_all, items)


def _apply_all(items: list[Settled]) -> None:
    for entry, result, error in items:
        entry.apply(result, error)


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
        adaptive_wait: bool = False,
    ):
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self.adaptive_wait = adaptive_wait
        # Requests submitted and not yet answered, and the most of them at once in this and
        # the previous window of PEAK_WINDOW_S (what an adaptive wait waits for).
        self._counting = threading.Lock()
        self._in_flight = 0
        self._peak = self._previous_peak = 0
        self._window_ends = 0.0
        # One worker at a time collects a batch (the others answer theirs meanwhile): two
        # workers waiting side by side would split the same burst into two half batches.
        self._collecting = threading.Lock()
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
        self._count(+1)
        try:
            return await asyncio.wait_for(entry.future, timeout_s)
        except TimeoutError:
            raise RequestTimeoutError(
                f"no answer within {timeout_s:g} s; the request was dropped"
            ) from None
        finally:
            self._count(-1)

    def _count(self, change: int) -> None:
        with self._counting:
            self._in_flight += change
            if change < 0:
                return
            now = time.monotonic()
            if now >= self._window_ends:
                recent = now - self._window_ends < PEAK_WINDOW_S
                self._previous_peak = self._peak if recent else 0
                self._peak = 0
                self._window_ends = now + PEAK_WINDOW_S
            self._peak = max(self._peak, self._in_flight)

    def _worth_waiting(self, batch: int) -> bool:
        """Whether more requests can be expected within the wait: `batch` holds fewer than
        this worker's share of the requests in flight at once of late. A lone client (or
        requests in step with the model) never waits; eight clients and two workers make
        two batches of four, answered side by side."""
        if not self.adaptive_wait:
            return True
        recent = max(self._peak, self._previous_peak)
        return batch < -(-recent // len(self._workers))

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
        with self._collecting:
            return self._collect_one()

    def _collect_one(self) -> list[_Entry]:
        # Each request is validated as it is taken, while the next ones are still arriving,
        # not after the batch closes: with clients in step, their decoding then leaves the
        # path each answer waits on.
        first = None
        while first is None and not self._stopped.is_set():
            first = self._next(timeout=None)
            if first is not None and not (self._live(first) and self._prepared(first)):
                first = None
        if first is None:
            return []
        batch, rows = [first], first.rows
        closes = time.monotonic() + self.max_wait_s
        while rows < self.max_rows:
            # Past the wait (or when no more are expected), still take what is already
            # queued (timeout 0 does not block).
            wait = closes - time.monotonic() if self._worth_waiting(len(batch)) else 0.0
            entry = self._next(timeout=max(wait, 0.0))
            if entry is None:
                break
            if not self._live(entry) or not self._prepared(entry):
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

    def _settled(self, entry: _Entry, answer: pd.DataFrame) -> Settled:
        if entry.finish is None:
            return entry, answer, None
        try:
            return entry, entry.finish(answer), None
        except Exception as error:
            log.exception("could not encode an answer")
            return entry, None, error

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
                deliver([self._answer_alone(entry) for entry in entries])
                continue
            self._report(entries, started, failed=False)
            deliver(
                [
                    self._settled(entry, answer)
                    for entry, answer in zip(entries, answers, strict=True)
                ]
            )

    def _answer_alone(self, entry: _Entry) -> Settled:
        started = time.monotonic()
        try:
            answer = entry.model.answer([entry.request])[0]
        except Exception as error:
            log.exception("a request failed in the model")
            self._report([entry], started, failed=True)
            return entry, None, error
        self._report([entry], started, failed=False)
        return self._settled(entry, answer)

    def _report(self, entries: list[_Entry], started: float, failed: bool) -> None:
        if self._on_batch is not None:
            rows = sum(entry.rows for entry in entries)
            self._on_batch(BatchStats(len(entries), rows, time.monotonic() - started, failed))
