# Databricks notebook source
# MAGIC %md
# MAGIC # 03 · Train data-parallel with Horovod on Spark, and index the catalog
# MAGIC The same steps as `simrec train --distributed` and `simrec index`: `distributed.num_proc`
# MAGIC Horovod ranks, one per Spark task, each streaming its own shard of the Fashion-MNIST table
# MAGIC at a pinned Delta version; rank 0 logs the model to MLflow like `03_train` does, so
# MAGIC `04_evaluate` evaluates it with the same function (it takes the newest indexed run).
# MAGIC Needs `01_ingest`, and at least `distributed.num_proc` Spark task slots.
# MAGIC Settings come from `load_settings()` (`SIMREC_CONFIG`).

# COMMAND ----------

from simrec.config import load_settings
from simrec.distributed.train import train_distributed
from simrec.index.build import build_catalog_index
from simrec.lake.tables import Lakehouse
from simrec.spark import get_spark

TABLE_VERSION = None  # a Delta version of the Fashion-MNIST table to train on; None = latest

settings = load_settings()
lake = Lakehouse(settings.lake.root)
table = lake.pin(settings.lake.fashion_table, TABLE_VERSION)
spark = get_spark(settings.spark)  # on Databricks: the cluster's session
table

# COMMAND ----------

result = train_distributed(settings, lake, table, spark=spark)
{
    "run_id": result.run_id,
    "processes": result.num_proc,
    "images_per_second": round(result.images_per_second),
    "ranks_identical": len({worker.final_weights_digest for worker in result.workers}) == 1,
    "val_recall_at_1": result.val_recall_at_1,
}

# COMMAND ----------

indexed = build_catalog_index(settings, lake, result.run_id)
{"run_id": indexed.run_id, "index_size": len(indexed.index), "kind": settings.index.kind}
