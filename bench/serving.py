"""Serving latency and throughput: single-image requests to `simrec serve` (bearer token,
guard, micro-batching), beside in-process `predict` on the same inputs and plain
`mlflow models serve` of the same registered model, side by side in one run at concurrency
1, 8 and 32; then a 60-second run at concurrency 8 with the error count and the server's
memory before and after.

Both servers run at once and the three are measured in turns, `ROUNDS` times: on a shared
machine whose speed drifts by tens of percent within minutes, a ratio of two measurements
taken minutes apart measures the drift. Each figure is the median over the rounds; each goal
ratio is the median of the ratios within a round.

Goals (issue 14): at concurrency 8, ≥ 4× the requests/s of `mlflow models serve` with a p99
no worse; at concurrency 1, a p50 ≤ 1.5× in-process `predict`.

The model is the default architecture trained briefly in the benchmark itself (latency does
not depend on how well it is trained); the index is the full 60 000-image train split.
Load stays on 127.0.0.1, from a thread pool in this process (`http.client` keep-alive
connections and bodies encoded beforehand: on 2 shared cores the client must not cost more
CPU per request than the servers it measures). Each server's CPU seconds per request (its
process and threads, from /proc) are recorded beside its latency.

    python -m bench.serving [--set train.steps_per_epoch=50 ...]
"""

from __future__ import annotations

import argparse
import http.client
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import mlflow
import numpy as np
import psutil
import pyarrow.compute as pc

from bench.results import record
from simrec.config import Settings, load_settings
from simrec.lake.fashion_mnist import ingest_fashion_mnist
from simrec.lake.tables import Lakehouse
from simrec.model.train import train
from simrec.serving.package import package_run, query_frame

WORKSPACE = Path(__file__).resolve().parent / ".work" / "serving"
QUICK_TRAINING = {
    "train.epochs": 1,
    "train.steps_per_epoch": 50,
    "train.max_rows": 10000,
    "train.validation_queries": 500,
}
QUERY_IMAGES = 200  # distinct test-split images, cycled through
REQUESTS = {1: 300, 8: 800, 32: 1600}  # per measurement, by concurrency
ROUNDS = 5  # turns of the three ways, interleaved
WARMUP_REQUESTS = 20
SOAK_SECONDS = 60
SOAK_CONCURRENCY = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentiles(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1000
    return {
        "requests": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "throughput_rps": round(len(ms) / wall_s, 1),
    }


def _cpu_s(pid: int) -> float:
    """CPU seconds of process `pid` and its children (mlflow's server runs in a child)."""
    process = psutil.Process(pid)
    processes = [process, *process.children(recursive=True)]
    total = 0.0
    for each in processes:
        try:
            times = each.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _load(
    call: Callable[[int], bool], requests: int, concurrency: int, pid: int | None = None
) -> dict[str, float]:
    """`requests` calls of `call(i)` from `concurrency` threads; latency of each, and CPU
    milliseconds per request of the server `pid` and of this process (the client)."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(position: int) -> None:
        nonlocal errors
        started = time.perf_counter()
        ok = call(position)
        elapsed = time.perf_counter() - started
        with lock:
            latencies.append(elapsed)
            errors += not ok

    server_cpu = _cpu_s(pid) if pid else 0.0
    client_cpu = time.process_time()
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    result = _percentiles(latencies, time.perf_counter() - started)
    result["errors"] = errors
    if pid:
        result["server_cpu_ms_per_request"] = round((_cpu_s(pid) - server_cpu) / requests * 1e3, 2)
    result["client_cpu_ms_per_request"] = round(
        (time.process_time() - client_cpu) / requests * 1e3, 2
    )
    return result


class HttpCaller:
    """One keep-alive `http.client` connection per load thread, request bodies encoded
    beforehand; True when the answer is a 200. The load generator shares the 2 cores with
    the server it measures: an httpx client cost 1.6 ms of CPU per request (http.client:
    0.3 ms), a third of what simrec's server spends, so a leaner client (the same for every
    server) measures the servers rather than the client."""

    def __init__(self, url: str, bodies: list[bytes], token: str | None):
        parsed = urlsplit(url)
        self.host, self.port = parsed.hostname, parsed.port
        self.bodies = bodies
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()

    def __call__(self, position: int) -> bool:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
            self._local.connection = connection
        try:
            connection.request(
                "POST", "/invocations", self.bodies[position % len(self.bodies)], self.headers
            )
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            connection.close()  # reconnects on the next call
            return False
        return response.status == 200


def _interleaved(ways: dict[str, tuple[Callable[[int], bool], int | None]]) -> dict[str, dict]:
    """Each way (a caller and its server's pid, None in-process) at every concurrency, in
    turns: round after round, each concurrency measured for every way before the next. Per
    way and concurrency: every round's figures and their medians; per round, the ratios."""
    for call, _ in ways.values():
        _load(call, WARMUP_REQUESTS, 1)
    rounds: dict[str, dict[str, list[dict[str, float]]]] = {
        name: {f"c{c}": [] for c in REQUESTS} for name in ways
    }
    for _ in range(ROUNDS):
        for concurrency, count in REQUESTS.items():
            for name, (call, pid) in ways.items():
                rounds[name][f"c{concurrency}"].append(_load(call, count, concurrency, pid))
    return {
        name: {
            level: {**_medians(measured), "rounds": measured}
            for level, measured in by_level.items()
        }
        for name, by_level in rounds.items()
    }


def _medians(measured: list[dict[str, float]]) -> dict[str, float]:
    return {
        key: round(float(np.median([each[key] for each in measured])), 2) for key in measured[0]
    }


def _median_ratio(
    first: dict[str, dict], second: dict[str, dict], level: str, metric: str
) -> float:
    """Median over the rounds of first/second, each round's two figures measured together."""
    pairs = zip(first[level]["rounds"], second[level]["rounds"], strict=True)
    return round(float(np.median([one[metric] / other[metric] for one, other in pairs])), 2)


def _rss_mb(pid: int) -> float:
    process = psutil.Process(pid)
    rss = process.memory_info().rss + sum(
        child.memory_info().rss for child in process.children(recursive=True)
    )
    return round(rss / 2**20, 1)


@contextmanager
def _server(command: list[str], env: dict[str, str], url: str, log: Path) -> Iterator[int]:
    """Start a server process, wait for /ping, yield its pid, stop it."""
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{command[:3]} exited; see {log}")
                try:
                    if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not come up; see {log}")
                time.sleep(0.5)
            yield process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _soak(call: HttpCaller, pid: int) -> dict[str, float]:
    rss_before = _rss_mb(pid)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop_at = time.perf_counter() + SOAK_SECONDS

    def worker(offset: int) -> None:
        nonlocal errors
        position = offset
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            ok = call(position)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                errors += not ok
            position += SOAK_CONCURRENCY

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(SOAK_CONCURRENCY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = _percentiles(latencies, time.perf_counter() - started)
    result.update(errors=errors, rss_mb_before=rss_before, rss_mb_after=_rss_mb(pid))
    return result


def _prepare(settings: Settings) -> tuple[str, list[bytes]]:
    """Ingest, train briefly, index the full train split, package; the model URI and queries."""
    lake = Lakehouse(settings.lake.root)
    ingested = ingest_fashion_mnist(lake, settings.fashion_mnist, settings.lake.fashion_table)
    table = lake.pin(ingested.name, ingested.version)
    trained = train(settings, lake, table, run_name="bench-serving")
    packaged = package_run(settings, lake, trained.run_id, force=True)
    rows = lake.read(table.name, table.version, columns=["id", "split", "image"])
    tests = rows.filter(pc.equal(rows.column("split"), "test")).sort_by("id")
    return packaged.registry_uri, tests.slice(0, QUERY_IMAGES).column("image").to_pylist()


def _batching(text: str) -> dict[str, float]:
    """Model calls and requests per call, from the server's own /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    calls = values.get("simrec_batch_requests_count", 0.0)
    requests = values.get("simrec_batch_requests_sum", 0.0)
    return {
        "model_calls": calls,
        "requests": requests,
        "mean_requests_per_call": round(requests / calls, 2) if calls else 0.0,
    }


def main(overrides: list[str]) -> dict[str, object]:
    load_before = os.getloadavg()[0]
    shutil.rmtree(WORKSPACE, ignore_errors=True)
    WORKSPACE.mkdir(parents=True)
    settings = load_settings(
        overrides={
            "lake.root": str(WORKSPACE / "lakehouse"),
            "mlflow.tracking_uri": f"sqlite:///{WORKSPACE / 'mlflow.db'}",
            "mlflow.artifact_root": str(WORKSPACE / "mlruns"),
            **QUICK_TRAINING,
        }
    ).with_overrides(overrides)
    model_uri, images = _prepare(settings)
    frames = [query_frame([image]) for image in images]
    bodies = [
        ('{"dataframe_split": ' + frame.to_json(orient="split", index=False) + "}").encode()
        for frame in frames
    ]

    model = mlflow.pyfunc.load_model(model_uri)

    def in_process(position: int) -> bool:
        return len(model.predict(frames[position % len(frames)])) > 0

    bin_dir = str(Path(sys.executable).parent)
    src_dir = str(Path(__file__).resolve().parents[1] / "src")
    token = secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(filter(None, [src_dir, os.environ.get("PYTHONPATH")])),
        "MLFLOW_TRACKING_URI": settings.mlflow.tracking_uri,
        "SIMREC_API_TOKEN": token,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    store = [
        f"--set=mlflow.tracking_uri={settings.mlflow.tracking_uri}",
        f"--set=mlflow.artifact_root={settings.mlflow.artifact_root}",
    ]
    simrec_port, mlflow_port = _free_port(), _free_port()
    simrec_url, mlflow_url = f"http://127.0.0.1:{simrec_port}", f"http://127.0.0.1:{mlflow_port}"
    simrec_serve = [sys.executable, "-m", "simrec.cli", "serve", "--model-uri", model_uri]
    # The same overrides reach the server (serving.* settings such as the batching).
    store += [f"--set={override}" for override in overrides]
    mlflow_serve = [
        str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", model_uri,
        "--env-manager", "local", "--host", "127.0.0.1", "--port", str(mlflow_port),
    ]  # fmt: skip
    with (
        _server(
            [*simrec_serve, "--port", str(simrec_port), *store],
            env,
            simrec_url,
            WORKSPACE / "simrec-serve.log",
        ) as pid,
        _server(mlflow_serve, env, mlflow_url, WORKSPACE / "mlflow-serve.log") as mlflow_pid,
    ):
        call = HttpCaller(simrec_url, bodies, token)
        measured = _interleaved(
            {
                "simrec_serve": (call, pid),
                "in_process": (in_process, None),
                "mlflow_serve": (HttpCaller(mlflow_url, bodies, None), mlflow_pid),
            }
        )
        unauthorized = HttpCaller(simrec_url, bodies[:1], "wrong-token")(0)
        soak = _soak(call, pid)
        batching = _batching(httpx.get(f"{simrec_url}/metrics", timeout=10).text)
    guarded, in_process_measured, plain = (
        measured["simrec_serve"],
        measured["in_process"],
        measured["mlflow_serve"],
    )

    summary: dict[str, object] = {}
    for name, by_level in measured.items():
        for concurrency, numbers in by_level.items():
            for metric in ("p50_ms", "p99_ms", "throughput_rps", "server_cpu_ms_per_request"):
                if metric in numbers:
                    summary[f"{name}_{concurrency}_{metric}"] = numbers[metric]
    c8_ratio = _median_ratio(guarded, plain, "c8", "throughput_rps")
    c1_ratio = _median_ratio(guarded, in_process_measured, "c1", "p50_ms")
    summary.update(
        {
            "goal_c8_rps_vs_mlflow": c8_ratio,
            "goal_c8_p99_no_worse_than_mlflow": guarded["c8"]["p99_ms"] <= plain["c8"]["p99_ms"],
            "goal_c1_p50_vs_in_process": c1_ratio,
            "c8_rps_vs_mlflow_each_round": [
                round(one["throughput_rps"] / other["throughput_rps"], 2)
                for one, other in zip(guarded["c8"]["rounds"], plain["c8"]["rounds"], strict=True)
            ],
            "goals_met": bool(
                c8_ratio >= 4
                and guarded["c8"]["p99_ms"] <= plain["c8"]["p99_ms"]
                and c1_ratio <= 1.5
            ),
            "mean_requests_per_model_call": batching["mean_requests_per_call"],
            "soak_60s_c8_requests": soak["requests"],
            "soak_60s_c8_errors": soak["errors"],
            "soak_60s_c8_p99_ms": soak["p99_ms"],
            "soak_server_rss_mb_before": soak["rss_mb_before"],
            "soak_server_rss_mb_after": soak["rss_mb_after"],
        }
    )
    result = {
        "summary": summary,
        "simrec_serve": guarded,
        "in_process": in_process_measured,
        "mlflow_serve": plain,
        "soak": soak,
        "wrong_token_rejected": not unauthorized,
        "batching": batching,
        "setup": {
            "requests": "single image (a 28×28 Fashion-MNIST test PNG), k=5, thumbnails on",
            "index": "flat inner-product, full train split (60 000 items)",
            "model": "default architecture, trained briefly here: latency only, not quality",
            "load": "thread pool in the benchmark process, one keep-alive http.client "
            "connection per thread, bodies encoded beforehand, loopback",
            "rounds": f"{ROUNDS} turns of the three ways at each concurrency, both servers up "
            "throughout; figures are medians over the rounds",
            "servers": "one uvicorn worker each, access log on (the defaults); TensorFlow op "
            "threads: simrec's serving.tensorflow_threads, mlflow's TensorFlow default",
            "batching": {
                key: getattr(settings.serving, key)
                for key in (
                    "batch_max_rows",
                    "batch_max_wait_ms",
                    "batch_wait_adaptive",
                    "batch_workers",
                    "queue_max_requests",
                    "tensorflow_threads",
                    "batch_search_threads",
                    "search_threads",
                    "search_blas_min_queries",
                )
            },
            "machine_load": f"1-minute load average before the run: {load_before:.1f}",
            "overrides": {**QUICK_TRAINING, **dict(o.split("=", 1) for o in overrides)},
        },
    }
    record("serving", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    print(main(parser.parse_args().overrides))
