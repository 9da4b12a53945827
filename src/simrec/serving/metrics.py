"""The server's Prometheus metrics (`prometheus_client`), one registry per server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from simrec.serving.batching import BatchStats

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Bucket edges (seconds, rows): a product page waits milliseconds; requests hold ≤ 64 rows.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "simrec_requests",
            "HTTP requests answered, by path and status",
            ["path", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "simrec_request_latency_seconds",
            "Time to answer /invocations",
            ["status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.request_rows = Histogram(
            "simrec_request_rows",
            "Query rows per accepted request",
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "simrec_batch_rows",
            "Query rows per model call (micro-batch)",
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "simrec_batch_requests",
            "Requests coalesced per model call",
            buckets=ROW_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "simrec_batch_seconds", "Time of one model call", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_failures = Counter(
            "simrec_batch_failures", "Model calls that raised", registry=r
        )
        self.queue_depth = Gauge("simrec_queue_depth", "Requests waiting for the model", registry=r)
        self.rejected = Counter(
            "simrec_rejected",
            "Requests refused without reaching the model",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "simrec_model_info",
            "The model answering (1) by registered name, version, alias",
            ["name", "version", "alias"],
            registry=r,
        )
        self.index_size = Gauge("simrec_index_size", "Items the served index holds", registry=r)
        self.loaded_at = Gauge(
            "simrec_model_loaded_at_seconds", "Unix time the served model was loaded", registry=r
        )
        self.ready = Gauge("simrec_ready", "1 when the last self-query succeeded", registry=r)
        self.reloads = Counter(
            "simrec_model_reloads", "Switches to a new registered version", registry=r
        )

    def record_batch(self, stats: BatchStats) -> None:
        self.batch_rows.observe(stats.rows)
        self.batch_requests.observe(stats.requests)
        self.batch_seconds.observe(stats.seconds)
        if stats.failed:
            self.batch_failures.inc()

    def serving(self, name: str, version: str, alias: str, index_size: int, loaded_at: float):
        """The model now answering (the previous one's info series removed)."""
        self.model_info.clear()
        self.model_info.labels(name, version, alias).set(1)
        self.index_size.set(index_size)
        self.loaded_at.set(loaded_at)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
