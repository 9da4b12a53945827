# Databricks notebook source
# MAGIC %md
# MAGIC # 03 · Train the similarity model and index the catalog
# MAGIC The same steps as `simrec train` and `simrec index`: TensorFlow Similarity on the
# MAGIC Fashion-MNIST table at a pinned Delta version, logged to MLflow (config, lineage, curves,
# MAGIC model), then the catalog embedded into a faiss index stored with the run.
# MAGIC Needs `01_ingest`. Settings come from `load_settings()` (`SIMREC_CONFIG`).

# COMMAND ----------

from simrec.config import load_settings
from simrec.index.build import build_catalog_index
from simrec.lake.tables import Lakehouse
from simrec.model.train import train

TABLE_VERSION = None  # a Delta version of the Fashion-MNIST table to train on; None = latest

settings = load_settings()
lake = Lakehouse(settings.lake.root)
table = lake.pin(settings.lake.fashion_table, TABLE_VERSION)
table

# COMMAND ----------

result = train(settings, lake, table)
{
    "run_id": result.run_id,
    "best_epoch": result.best_epoch,
    "val_recall_at_1": result.val_recall_at_1,
}

# COMMAND ----------

indexed = build_catalog_index(settings, lake, result.run_id)
{"run_id": indexed.run_id, "index_size": len(indexed.index), "kind": settings.index.kind}
