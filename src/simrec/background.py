"""A pipeline step that runs beside another in a child process, on the CPU time the other leaves.

`simrec pipeline` trains the fashion model on every core it can use, yet training leaves some
idle (its input feed and the gaps between TensorFlow ops); the furniture style model does not
depend on it. Run there, at the lowest CPU priority (Linux `SCHED_IDLE`, else `nice 19`), the
style step takes only what training leaves and is done, or nearly, when training is.

The child is spawned (a fresh interpreter: no TensorFlow state shared with the parent), logs
through `logging` at the parent's levels and draws no progress bars. Its return value or its
error (with the child's traceback) comes back through `BackgroundStep.result`; leaving the
`with` block early stops it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal

from threadpoolctl import threadpool_limits

import simrec
from simrec.progress import hide_progress_bars
from simrec.serving.resources import size_tensorflow_threads

log = logging.getLogger(__name__)

Priority = Literal["idle", "nice", "normal"]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class BackgroundStepError(RuntimeError):
    """The background step raised; the message carries the child's traceback."""


def lower_priority(priority: Priority) -> str:
    """Lower this process's CPU priority; threads it starts later inherit it. What was set."""
    if priority == "normal":
        return "normal"
    if priority == "idle" and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "idle"
        except OSError as error:  # a sandbox that forbids it: nice is the next best
            log.debug("SCHED_IDLE refused (%s): using nice 19", error)
    os.nice(19 - os.nice(0))
    return "nice"


def limit_threads(threads: int) -> None:
    """BLAS/OpenMP pools (threadpoolctl) and TensorFlow's op pools of this process capped at
    `threads`: one background thread takes at most one core from the step beside it, and
    does not spin-wait on the others. Libraries loaded later read the environment variables."""
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    threadpool_limits(limits=threads)
    size_tensorflow_threads(threads)


def _child(
    name: str,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    priority: Priority,
    threads: int | None,
    levels: tuple[int, int, str],
    answer: Connection,
) -> None:
    root_level, simrec_level, log_format = levels
    logging.basicConfig(level=root_level, format=log_format)
    logging.getLogger("simrec").setLevel(simrec_level)
    hide_progress_bars()
    if threads is not None:
        limit_threads(threads)
    log.info(
        "%s: running in the background (pid %d, %s priority, %s threads)",
        name,
        os.getpid(),
        lower_priority(priority),
        threads or "all",
    )
    try:
        outcome: tuple[str, Any] = ("ok", function(*args))
    except BaseException as error:  # noqa: BLE001 - everything goes back to the parent
        outcome = ("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
    answer.send(outcome)
    answer.close()


def _parent_levels() -> tuple[int, int, str]:
    root = logging.getLogger()
    formats = [h.formatter._fmt for h in root.handlers if h.formatter and h.formatter._fmt]
    log_format = next(iter(formats), logging.BASIC_FORMAT)
    return root.level, logging.getLogger("simrec").getEffectiveLevel(), log_format


class BackgroundStep:
    """`function(*args)` in a spawned child at `priority`, on at most `threads` threads
    (None: as many as the libraries choose); `result()` waits for its answer.

    Arguments and the return value cross the process boundary by pickle."""

    def __init__(
        self,
        name: str,
        function: Callable[..., Any],
        *args: Any,
        priority: Priority = "idle",
        threads: int | None = None,
    ):
        self.name = name
        context = multiprocessing.get_context("spawn")
        self._answers, answer = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_child,
            args=(name, function, args, priority, threads, _parent_levels(), answer),
            name=f"simrec-{name}",
            daemon=True,
        )
        # The child imports simrec from the parent's sys.path: put the simrec this process runs
        # first, so a model's bundled copy of the code that mlflow.pyfunc put on sys.path
        # (code_paths, maybe since deleted) is not the one the child runs.
        package_root = str(Path(simrec.__file__).resolve().parents[1])
        saved = list(sys.path)
        sys.path.insert(0, package_root)
        try:
            self._process.start()
        finally:
            sys.path[:] = saved
        answer.close()  # the child holds the only writing end: its death ends the pipe

    def result(self) -> Any:
        """The step's return value, once it is done; `BackgroundStepError` if it failed."""
        try:
            status, value = self._answers.recv()
        except EOFError:
            self._process.join()
            raise BackgroundStepError(
                f"{self.name}: the background process died (exit code {self._process.exitcode})"
                " before answering"
            ) from None
        finally:
            self._answers.close()
        self._process.join()
        if status != "ok":
            raise BackgroundStepError(f"{self.name} failed in the background: {value}")
        return value

    def stop(self) -> None:
        if self._process.is_alive():
            log.warning("%s: stopping the background step", self.name)
            self._process.terminate()
        self._process.join()

    def __enter__(self) -> BackgroundStep:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
