# Databricks notebook source
# MAGIC %md
# MAGIC # simrec: catalog updates without retraining
# MAGIC New items land in the Delta table (`simrec ingest`, or any writer; deletions with
# MAGIC `Lakehouse.delete`). `reindex` reads the table's change data feed from the version the
# MAGIC served model was built from, embeds only the new rows with the same weights, removes the
# MAGIC deleted ones from the index and registers a new model version with its lineage.
# MAGIC `batch_recommend` then writes the k most similar items of every catalog item to a Delta
# MAGIC table, on Spark. Thin over `simrec` functions, like `simrec reindex` and
# MAGIC `simrec batch-recommend`; settings come from `load_settings()` (`SIMREC_CONFIG` picks
# MAGIC another file). Run after notebook 01 (a trained and indexed run).

# COMMAND ----------

from simrec.batch.recommend import batch_recommend
from simrec.config import load_settings
from simrec.index.reindex import reindex
from simrec.lake.fashion_mnist import ingest_fashion_mnist
from simrec.lake.tables import Lakehouse
from simrec.serving.bundle import registered_lineage
from simrec.serving.package import served_model_uri
from simrec.spark import get_spark, read_table

settings = load_settings()
lake = Lakehouse(settings.lake.root)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The model in service and the table version its catalog reflects
# MAGIC (packaged here from the newest indexed run if nothing is registered yet).

# COMMAND ----------

model_uri = served_model_uri(settings, lake)
registered_lineage(model_uri)

# COMMAND ----------

# MAGIC %md
# MAGIC ## New rows arrive, the index follows
# MAGIC Ingest adds only rows that are not in the table yet; with nothing new, `reindex` says so
# MAGIC and registers nothing.

# COMMAND ----------

ingest_fashion_mnist(lake, settings.fashion_mnist, settings.lake.fashion_table)
result = reindex(settings, model_uri)
print(result.summary())

# COMMAND ----------

# MAGIC %md
# MAGIC ## Batch recommendations on Spark
# MAGIC One row per (item, rank), the item itself excluded, with the model and source table
# MAGIC versions that produced it.

# COMMAND ----------

spark = get_spark(settings.spark)
batch = batch_recommend(settings, spark, model_uri)
print(batch.summary())
read_table(spark, lake, batch.output).orderBy("item_id", "rank").limit(10).toPandas()
