"""Index kinds at catalog scale: flat (exact) vs HNSW vs IVF, as `index.kind` offers them,
on the 60 000-item Fashion-MNIST catalog (real embeddings of a briefly trained default model,
queried with test-split embeddings) and on synthetic vectors of the same dimension (default
1 M: catalog vectors plus Gaussian noise, L2-normalised, so they keep the catalog's clustered
shape; queries are fresh draws of the same kind).

Per kind and data set: build time, index memory (its serialised size), queries per second at
batch 1 and batch 64 (faiss threads as `serving.search_threads`), recall@10 against exact
search. The default-choosing rule stated in the README is checked here: `suggested_kind`.

    python -m bench.index [--rows 1000000] [--set index.hnsw_m=32 ...]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import faiss
import numpy as np

from bench.results import fresh_workspace, record
from simrec.config import IndexSettings, Settings
from simrec.index.build import build_catalog_index
from simrec.index.faiss_index import build_index
from simrec.lake.fashion_mnist import ingest_fashion_mnist
from simrec.lake.tables import Lakehouse
from simrec.model.data import read_split
from simrec.model.embedding import embed
from simrec.model.train import train
from simrec.runs import load_embedding_model
from simrec.serving.resources import available_cpus

WORKSPACE = Path(__file__).resolve().parent / ".work" / "index"
QUICK_TRAINING = {
    "train.epochs": 1,
    "train.steps_per_epoch": 50,
    "train.max_rows": 10000,
    "train.validation_queries": 500,
}
KINDS = ("flat", "hnsw", "ivf")
QUERIES = 1000
BATCH_ONE_QUERIES = 200  # one at a time (a product page's request)
BATCH = 64
RECALL_AT = 10
SYNTHETIC_NOISE = 0.05  # per-dimension standard deviation added to catalog vectors
RECALL_GOAL = 0.99
SPEEDUP_GOAL = 5.0


def _normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def catalog_vectors(settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """The 60k catalog's embeddings and test-split query embeddings of a quick model."""
    lake = Lakehouse(settings.lake.root)
    ingested = ingest_fashion_mnist(lake, settings.fashion_mnist, settings.lake.fashion_table)
    table = lake.pin(ingested.name, ingested.version)
    trained = train(settings, lake, table, run_name="bench-index")
    built = build_catalog_index(settings, lake, trained.run_id)
    index = built.index
    base = index.vectors(np.asarray([index.key_of(i) for i in index.live_item_ids()]))
    tests = read_split(
        lake, table, "test", settings.model.image_size, settings.model.channels, QUERIES
    )
    queries = embed(load_embedding_model(trained.run_id), tests.pixels)
    return _normalised(base), _normalised(queries)


def synthetic_vectors(
    catalog: np.ndarray, rows: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)

    def draw(count: int) -> np.ndarray:
        picks = catalog[rng.integers(0, len(catalog), count)]
        noise = rng.normal(0.0, SYNTHETIC_NOISE, picks.shape).astype(np.float32)
        return _normalised(picks + noise)

    return draw(rows), draw(QUERIES)


def _qps(search, queries: np.ndarray, batch: int, count: int) -> float:
    started = time.perf_counter()
    done = 0
    while done < count:
        chunk = queries[done % len(queries) : done % len(queries) + batch]
        search(chunk)
        done += len(chunk)
    return done / (time.perf_counter() - started)


def measure(
    base: np.ndarray,
    queries: np.ndarray,
    settings: IndexSettings,
    build_threads: int,
    search_threads: int,
) -> dict[str, dict]:
    ids = [str(n) for n in range(len(base))]
    results, exact = {}, None
    for kind in KINDS:
        faiss.omp_set_num_threads(build_threads)
        started = time.perf_counter()
        index = build_index(ids, base, settings.model_copy(update={"kind": kind}))
        build_s = time.perf_counter() - started
        faiss.omp_set_num_threads(search_threads)
        memory = faiss.serialize_index(index._index).nbytes

        def search(chunk, index=index):
            return index.search(chunk, RECALL_AT)

        found, _ = search(queries)
        if kind == "flat":
            exact = found
        recall = float(
            np.mean([len(set(f) & set(e)) / RECALL_AT for f, e in zip(found, exact, strict=True)])
        )
        results[kind] = {
            "build_s": round(build_s, 2),
            "memory_mb": round(memory / 2**20, 1),
            "qps_batch1": round(_qps(search, queries, 1, BATCH_ONE_QUERIES), 1),
            "qps_batch64": round(_qps(search, queries, BATCH, QUERIES), 1),
            f"recall_at_{RECALL_AT}": round(recall, 4),
            "build_params": index.build_params,
        }
        print(f"{len(base)} vectors, {kind}: {results[kind]}")
    return results


def suggested_kind(results: dict[str, dict]) -> str:
    """The README's rule: the fastest kind (batch 1) with recall@10 ≥ 0.99, if it is at least
    5× exact search; else flat."""
    flat = results["flat"]["qps_batch1"]
    good = [
        kind
        for kind, numbers in results.items()
        if numbers[f"recall_at_{RECALL_AT}"] >= RECALL_GOAL
        and numbers["qps_batch1"] >= SPEEDUP_GOAL * flat
    ]
    return max(good, key=lambda kind: results[kind]["qps_batch1"]) if good else "flat"


def main(overrides: list[str], rows: int = 1_000_000) -> dict[str, object]:
    settings = fresh_workspace(WORKSPACE, overrides, QUICK_TRAINING)
    catalog, catalog_queries = catalog_vectors(settings)
    synthetic, synthetic_queries = synthetic_vectors(catalog, rows)
    threads = (available_cpus(), settings.serving.search_threads)
    measured = {
        "catalog": measure(catalog, catalog_queries, settings.index, *threads),
        "synthetic": measure(synthetic, synthetic_queries, settings.index, *threads),
    }
    summary: dict[str, object] = {}
    for name, size in (("catalog", len(catalog)), ("synthetic", rows)):
        for kind, numbers in measured[name].items():
            for metric in ("build_s", "memory_mb", "qps_batch1", "qps_batch64", "recall_at_10"):
                summary[f"{name}_{size}_{kind}_{metric}"] = numbers[metric]
        summary[f"{name}_{size}_suggested_kind"] = suggested_kind(measured[name])
    big = measured["synthetic"]
    best = max(
        (k for k in ("hnsw", "ivf") if big[k][f"recall_at_{RECALL_AT}"] >= RECALL_GOAL),
        key=lambda k: big[k]["qps_batch1"],
        default=None,
    )
    speedup = big[best]["qps_batch1"] / big["flat"]["qps_batch1"] if best else 0.0
    summary["goal_synthetic_speedup_at_recall_0.99"] = round(speedup, 2)
    summary["goal_met"] = speedup >= SPEEDUP_GOAL
    result = {
        "summary": summary,
        "measured": measured,
        "setup": {
            "catalog": f"{len(catalog)} Fashion-MNIST train embeddings, {QUERIES} test queries",
            "synthetic": f"{rows} catalog vectors + N(0, {SYNTHETIC_NOISE}) noise, normalised",
            "dim": int(catalog.shape[1]),
            "index": settings.index.model_dump(),
            "faiss_threads": {"build": threads[0], "search": threads[1]},
            "load": f"1-minute load average at the start: {os.getloadavg()[0]:.1f}",
            "overrides": overrides,
        },
    }
    record("index", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic vectors")
    arguments = parser.parse_args()
    print(main(arguments.overrides, arguments.rows))
