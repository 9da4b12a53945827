"""Catalog updates without retraining: re-indexing +1 % new rows from the Delta change feed
beside a full rebuild with the same weights; batch recommendations on local Spark beside the
same work in-process, in items per second.

The catalog is Fashion-MNIST's train split; the model is the default architecture trained
briefly here (the timings do not depend on how well it is trained). The table is first
ingested without the last ~1 % of the train split, packaged as version 1, then the rest
arrives. Both re-index calls start from version 1 and register a version (the alias is left
alone), so both include downloading the bundle and registering the result.

    python -m bench.reindex [--set batch.k=10 ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.results import fresh_workspace, record
from simrec.batch.recommend import batch_recommend, load_searcher, recommend_batch
from simrec.index.reindex import ReindexResult, reindex
from simrec.index.scope import CatalogScope
from simrec.lake.fashion_mnist import ingest_fashion_mnist
from simrec.lake.tables import Lakehouse
from simrec.model.train import train
from simrec.serving.bundle import download_bundle
from simrec.serving.package import package_run
from simrec.spark import get_spark

WORKSPACE = Path(__file__).resolve().parent / ".work" / "reindex"
QUICK_TRAINING = {
    "train.epochs": 1,
    "train.steps_per_epoch": 50,
    "train.max_rows": 10000,
    "train.validation_queries": 500,
}
TRAIN_SPLIT_ROWS = 60_000
NEW_FRACTION = 0.01


def _reindex_numbers(result: ReindexResult, seconds: float) -> dict[str, object]:
    assert result.package is not None
    return {
        "seconds": round(seconds, 1),
        "rows_added": result.rows_added,
        "index_size": result.package.lineage["index_size"],
        "phases_s": {name: round(value, 1) for name, value in result.timings.items()},
    }


def main(overrides: list[str]) -> dict[str, object]:
    settings = fresh_workspace(WORKSPACE, overrides, QUICK_TRAINING)
    lake = Lakehouse(settings.lake.root)
    name = settings.lake.fashion_table

    # The catalog before the update: the train split without its last ~1 %.
    before_rows = round(TRAIN_SPLIT_ROWS / (1 + NEW_FRACTION))
    first = ingest_fashion_mnist(lake, settings.fashion_mnist, name, before_rows)
    table = lake.pin(first.name, first.version)
    trained = train(settings, lake, table, run_name="bench-reindex")
    parent = package_run(settings, lake, trained.run_id, force=True)
    parent_uri = f"models:/{parent.registered_name}/{parent.version}"

    arrived = ingest_fashion_mnist(lake, settings.fashion_mnist, name)  # the last ~1 % arrives
    started = time.perf_counter()
    incremental = reindex(settings, parent_uri, alias="")
    incremental_s = time.perf_counter() - started
    started = time.perf_counter()
    rebuilt = reindex(settings, parent_uri, alias="", full=True)
    full_s = time.perf_counter() - started
    assert incremental.package and rebuilt.package
    assert incremental.package.lineage["index_size"] == rebuilt.package.lineage["index_size"]

    # Batch recommendations for every catalog item of the updated version.
    model_uri = incremental.package.registry_uri
    spark = get_spark(settings.spark)
    spark_runs = [batch_recommend(settings, spark, model_uri) for _ in range(2)]
    bundle = download_bundle(model_uri, WORKSPACE / "bundle")
    searcher = load_searcher(bundle.folder)
    source = lake.read(name, incremental.table.version, columns=["id", "split", "image"])
    rows = CatalogScope.from_lineage(bundle.lineage).select(source)
    item_ids = rows.column("id").to_pylist()
    images = rows.column("image").to_pylist()
    started = time.perf_counter()
    in_process = recommend_batch(
        searcher, item_ids, images, settings.batch.k, settings.batch.embed_batch_size
    )
    in_process_s = time.perf_counter() - started
    assert len(in_process) == spark_runs[0].rows

    cold, warm = spark_runs
    summary = {
        "reindex_plus_1pct_s": round(incremental_s, 1),
        "full_rebuild_s": round(full_s, 1),
        "reindex_speedup_x": round(full_s / incremental_s, 1),
        "batch_spark_cold_items_per_s": round(cold.items / cold.seconds, 1),
        "batch_spark_warm_items_per_s": round(warm.items / warm.seconds, 1),
        "batch_in_process_items_per_s": round(len(item_ids) / in_process_s, 1),
    }
    result = {
        "summary": summary,
        "catalog_rows_before": before_rows,
        "rows_arrived": arrived.rows_added,
        "incremental": _reindex_numbers(incremental, incremental_s),
        "full_rebuild": _reindex_numbers(rebuilt, full_s),
        "batch": {
            "items": cold.items,
            "k": cold.k,
            "rows_written": cold.rows,
            "spark_master": settings.spark.master,
            "spark_cores": spark.sparkContext.defaultParallelism,
            "spark_cold_s": round(cold.seconds, 1),
            "spark_warm_s": round(warm.seconds, 1),
            "in_process_s": round(in_process_s, 1),
        },
        "setup": {
            "index": "flat inner-product; catalog = Fashion-MNIST train split",
            "model": "default architecture, trained briefly here: timings only, not quality",
            "reindex": "both start from the same registered version and register a new one "
            "(download, update, log + register); full = every catalog row embedded again",
            "batch_spark": "whole batch_recommend call: read the pinned snapshot, count, ship "
            "the bundle, mapInPandas (decode, embed, search k+1, drop self), parquet parts, "
            "one Delta commit; cold = first run (workers import TensorFlow and load the "
            "bundle), warm = second run on the same session",
            "batch_in_process": "recommend_batch over the same rows on the driver, bundle "
            "already loaded, results kept in memory (no write)",
            "overrides": {**QUICK_TRAINING, **dict(o.split("=", 1) for o in overrides)},
        },
    }
    record("catalog_updates", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    print(main(parser.parse_args().overrides))
