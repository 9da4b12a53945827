"""Exact search of a micro-batch on several threads: faiss's own threads vs row slices.

What one `simrec serve` model call searches: a few queries (1 to 64) against the flat index
of the 60 000-item catalog at the default embedding dimension. Three ways, each the mean of
repeated searches, wall and CPU milliseconds per search (CPU: this process, every thread):
- `faiss_1`: faiss on one thread;
- `faiss_N`: faiss on every CPU (OpenMP threads spread over the queries);
- `slices_N`: the rows split between as many threads (`simrec.index.row_slices`).
`EmbeddingIndex.search_keys(threads=N)` takes the slices below `QUERIES_PER_THREAD` queries a
thread, faiss's threads from there (`picks_batch_B` in the summary).
The vectors are random unit vectors: a flat search costs the same whatever their values.

    python -m bench.batch_search [--set model.embedding_dim=128 ...]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import faiss
import numpy as np

from bench.results import record
from simrec.config import IndexSettings, load_settings
from simrec.index.faiss_index import build_index
from simrec.index.row_slices import RowSlices, split_by_rows
from simrec.serving.pyfunc import use_blas_from
from simrec.serving.resources import available_cpus

CATALOG_ROWS = 60_000  # the Fashion-MNIST train split that `simrec package` indexes
BATCHES = (1, 8, 32, 64)  # queries per search
K = 5  # as bench.serving's requests
SEARCH_SECONDS = 2.0  # repeated searches per way and batch for about this long


def _per_search_ms(search: Callable[[], object]) -> dict[str, float]:
    search()
    repeats, cpu, started = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - started < SEARCH_SECONDS:
        search()
        repeats += 1
    wall = (time.perf_counter() - started) / repeats * 1e3
    return {
        "wall_ms": round(wall, 2),
        "cpu_ms": round((time.process_time() - cpu) / repeats * 1e3, 2),
    }


def main(overrides: list[str]) -> dict[str, object]:
    settings = load_settings().with_overrides(overrides)
    dim = settings.model.embedding_dim
    threads = available_cpus()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(CATALOG_ROWS, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = build_index(
        [str(row) for row in range(CATALOG_ROWS)], vectors, IndexSettings(kind="flat")
    )
    use_blas_from(settings.serving.search_blas_min_queries, dim)
    slices = RowSlices(index._index)

    measured: dict[str, dict[str, dict[str, float]]] = {}
    summary: dict[str, object] = {}
    for batch in BATCHES:
        queries = vectors[rng.integers(0, CATALOG_ROWS, batch)]
        exact = index._faiss_search(queries, K, None, 1)[1]
        if not np.array_equal(exact, slices.search(queries, K, threads)[1]):
            raise AssertionError(f"row slices found other items than faiss at batch {batch}")
        ways = {
            "faiss_1": lambda q=queries: index._faiss_search(q, K, None, 1),
            f"faiss_{threads}": lambda q=queries: index._faiss_search(q, K, None, threads),
            f"slices_{threads}": lambda q=queries: slices.search(q, K, threads),
        }
        picks = "slices" if split_by_rows(batch, CATALOG_ROWS, threads) else "faiss"
        summary[f"picks_batch_{batch}"] = picks
        measured[f"batch_{batch}"] = {way: _per_search_ms(search) for way, search in ways.items()}
        for way, numbers in measured[f"batch_{batch}"].items():
            summary[f"batch_{batch}_{way}_wall_ms"] = numbers["wall_ms"]
            summary[f"batch_{batch}_{way}_cpu_ms"] = numbers["cpu_ms"]
    result = {
        "summary": summary,
        "measured": measured,
        "setup": {
            "catalog": f"{CATALOG_ROWS} random unit vectors of {dim} dimensions, flat inner "
            "product",
            "k": K,
            "threads": threads,
            "faiss": faiss.__version__,
            "blas_from_queries": settings.serving.search_blas_min_queries,
        },
    }
    record("batch_search", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    print(main(parser.parse_args().overrides))
