"""The model a server answers with, kept ready and current.

- `LoadedModel`: one loaded registered version (the pyfunc, its MLflow scoring app, name,
  version, alias, lineage, load time).
- `LiveModel`: the current one, swapped atomically. With `models:/NAME@ALIAS` a follower
  thread re-resolves the alias every `reload_seconds`; on a move it loads the new version
  beside the old, checks it answers a real query, then switches. Requests already queued
  keep the version they were validated against, so none fails during the switch.
- Readiness: a checker thread runs a real self-query against the current model every
  `health_interval_s`; `ready` is true only while the last one succeeded recently.
"""

from __future__ import annotations

import atexit
import logging
import re
import threading
import time
import weakref
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PyFuncModel

from simrec.serving.contract import ITEM_ID_COLUMN

log = logging.getLogger(__name__)

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
# A self-check older than this many intervals no longer counts (the checker is stuck).
STALE_INTERVALS = 3


_RUNNING: weakref.WeakSet[LiveModel] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Stop checker threads before the interpreter finalises (see batching._stop_all)."""
    for live in list(_RUNNING):
        live.stop()


@dataclass(frozen=True)
class LoadedModel:
    pyfunc: PyFuncModel
    source_uri: str  # what was asked for (models:/NAME@ALIAS, a path, …)
    name: str | None
    version: str | None
    alias: str | None
    lineage: dict[str, Any]
    loaded_at: float
    mlflow_app: Any = field(repr=False)

    @property
    def python_model(self) -> Any:
        try:
            return self.pyfunc.unwrap_python_model()
        except Exception:  # not a PythonModel flavour
            return None

    @cached_property
    def batch_model(self) -> Any:
        """What the micro-batcher asks (`answer(requests)`): the model's plain result columns
        when it offers them (`answer_columns`, no DataFrame per request), else its frames."""
        model = self.python_model
        return _ColumnsAnswer(model) if hasattr(model, "answer_columns") else model

    @property
    def batched(self) -> bool:
        """True for simrec's models: validated per request, answered in micro-batches."""
        model = self.python_model
        return all(hasattr(model, name) for name in ("parse", "answer", "probe_item_id"))

    @property
    def index_size(self) -> int:
        model = self.python_model
        return int(getattr(model, "index_size", 0) or self.lineage.get("index_size") or 0)

    @property
    def limits(self) -> dict[str, Any]:
        model = self.python_model
        config = getattr(model, "config", None) or getattr(model, "limits", None)
        if config is None:
            return {}
        keys = ("default_k", "max_k", "max_batch_size", "max_image_pixels")
        return {key: getattr(config, key) for key in keys if hasattr(config, key)}

    def use_search_threads(self, threads: int) -> None:
        """Search on `threads` threads in this process: a simrec server runs one
        micro-batch call per worker, so each call may use the CPUs the workers share, where
        the bundle's own `search_threads` (what `mlflow models serve` and in-process
        `predict` use, with requests side by side) is sized for parallel requests.
        Models without that setting are left as they are."""
        config = getattr(self.python_model, "config", None)
        if config is not None and hasattr(config, "search_threads"):
            config.search_threads = threads

    def describe(self) -> dict[str, Any]:
        """What /version reports."""
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "model_uri": self.source_uri,
            "loaded_at": self.loaded_at,
            "index_size": self.index_size,
            "lineage": self.lineage,
            "limits": self.limits,
        }

    def self_check(self) -> None:
        """Answer one real query (a catalog item) or raise."""
        if self.batched:
            model = self.python_model
            frame = pd.DataFrame({ITEM_ID_COLUMN: [model.probe_item_id]})
            answer = model.answer([model.parse(frame)])[0]
        elif self.pyfunc.input_example is not None:
            answer = self.pyfunc.predict(self.pyfunc.input_example)
        else:
            return
        if len(answer) == 0:
            raise RuntimeError("the self-query returned no results")


class _ColumnsAnswer:
    def __init__(self, model: Any):
        self.model = model

    def answer(self, requests: list[Any]) -> list[dict[str, list[Any]]]:
        return self.model.answer_columns(requests)


def registered_version(model_uri: str) -> tuple[str, str] | None:
    """(name, version) the registry URI names now; None for a URI outside the registry."""
    from simrec.serving.bundle import resolve_version

    if _ALIAS_URI.match(model_uri) or _VERSION_URI.match(model_uri):
        found = resolve_version(model_uri)
        return found.name, str(found.version)
    return None


def load_model(model_uri: str) -> LoadedModel:
    """Load `model_uri`; a registry alias is resolved to its version first (and loaded by
    version, so what is loaded is what is reported)."""
    from mlflow.pyfunc import scoring_server

    registered = registered_version(model_uri)
    alias_match = _ALIAS_URI.match(model_uri)
    load_uri = f"models:/{registered[0]}/{registered[1]}" if registered else model_uri
    pyfunc = mlflow.pyfunc.load_model(load_uri)
    metadata = pyfunc.metadata.metadata or {}
    loaded = LoadedModel(
        pyfunc=pyfunc,
        source_uri=model_uri,
        name=registered[0] if registered else None,
        version=registered[1] if registered else None,
        alias=alias_match["alias"] if alias_match else None,
        lineage=dict(metadata.get("simrec", {}).get("lineage", {})),
        loaded_at=time.time(),
        mlflow_app=scoring_server.init(pyfunc),
    )
    log.info("loaded %s (version %s)", model_uri, loaded.version)
    return loaded


def wrap_model(pyfunc: PyFuncModel, model_uri: str = "in-process") -> LoadedModel:
    """A model already loaded (tests, notebooks), as the server holds it."""
    from mlflow.pyfunc import scoring_server

    metadata = pyfunc.metadata.metadata or {}
    return LoadedModel(
        pyfunc=pyfunc,
        source_uri=model_uri,
        name=None,
        version=None,
        alias=None,
        lineage=dict(metadata.get("simrec", {}).get("lineage", {})),
        loaded_at=time.time(),
        mlflow_app=scoring_server.init(pyfunc),
    )


class LiveModel:
    """The current LoadedModel, its readiness, and the threads keeping both up to date."""

    def __init__(
        self,
        model: LoadedModel,
        health_interval_s: float,
        reload_seconds: float = 0.0,
        on_switch: Any = None,
        on_health: Any = None,
        prepare: Any = None,
    ):
        self.current = model  # one reference: reading it is atomic
        self._prepare = prepare  # applied to each version loaded beside, before it serves
        self.health_interval_s = health_interval_s
        self.reload_seconds = reload_seconds
        self._on_switch = on_switch
        self._on_health = on_health
        self._last_ok: float | None = None
        self.last_error: str | None = "no self-check yet"
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._check_lock = threading.Lock()

    def start(self) -> None:
        _RUNNING.add(self)
        self.check()
        self._spawn(self._health_loop, "simrec-health")
        if self.reload_seconds > 0 and _ALIAS_URI.match(self.current.source_uri):
            self._spawn(self._follow_loop, "simrec-registry-follow")

    def stop(self) -> None:
        self._stopped.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- readiness ----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        if self._last_ok is None:
            return False
        return time.monotonic() - self._last_ok < STALE_INTERVALS * self.health_interval_s

    def check(self) -> bool:
        """Run the self-query now; record and return whether it succeeded."""
        with self._check_lock:
            try:
                self.current.self_check()
            except Exception as error:
                self._last_ok = None
                self.last_error = f"{type(error).__name__}: {error}"
                log.warning("self-check failed: %s", self.last_error)
            else:
                self._last_ok, self.last_error = time.monotonic(), None
        if self._on_health is not None:
            self._on_health(self.ready)
        return self.ready

    def _health_loop(self) -> None:
        while not self._stopped.wait(self.health_interval_s):
            self.check()

    # -- registry follow ----------------------------------------------------------------------
    def _follow_loop(self) -> None:
        while not self._stopped.wait(self.reload_seconds):
            try:
                self.follow()
            except Exception:
                log.exception(
                    "re-resolving %s failed; still serving version %s",
                    self.current.source_uri,
                    self.current.version,
                )

    def follow(self) -> bool:
        """Switch to the version the alias names now, if it moved; True when switched."""
        current = self.current
        registered = registered_version(current.source_uri)
        if registered is None or registered[1] == current.version:
            return False
        log.info(
            "%s moved to version %s; loading it beside version %s",
            current.source_uri,
            registered[1],
            current.version,
        )
        candidate = load_model(current.source_uri)
        if self._prepare is not None:
            self._prepare(candidate)
        candidate.self_check()  # never switch to a version that cannot answer
        self.current = candidate
        self._last_ok = time.monotonic()
        if self._on_switch is not None:
            self._on_switch(candidate)
        log.info("now serving %s version %s", candidate.name, candidate.version)
        return True
