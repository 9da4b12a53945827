# Databricks notebook source
# MAGIC %md
# MAGIC # simrec: distributed training with Horovod on Spark
# MAGIC Thin over `simrec.distributed.train.train_distributed`: the same step as
# MAGIC `simrec train --distributed --num-proc N`. Each Horovod rank runs in a Spark task and
# MAGIC streams its own shard of the Fashion-MNIST Delta table at a pinned version; rank 0 logs the
# MAGIC model to MLflow, where `index` and `evaluate` take it like a single-process one.
# MAGIC On a cluster, `distributed.num_proc` is at most the number of task slots.

# COMMAND ----------

from simrec.config import load_settings
from simrec.distributed.train import train_distributed
from simrec.evaluation.evaluate import evaluate
from simrec.index.build import build_catalog_index
from simrec.lake.tables import Lakehouse
from simrec.spark import get_spark

# Overrides for a quick run; drop them for the full defaults.
settings = load_settings(
    overrides=["distributed.num_proc=2", "train.epochs=2", "train.steps_per_epoch=100"]
)
lake = Lakehouse(settings.lake.root)
table = lake.pin(settings.lake.fashion_table)  # ingest first: notebooks/01_ingest_train_evaluate
spark = get_spark(settings.spark)  # on Databricks: the cluster's session
table

# COMMAND ----------

result = train_distributed(settings, lake, table, spark=spark)
print(f"{result.num_proc} processes, {result.images_per_second:.0f} images/s; {result.model_uri}")
[(worker.rank, worker.final_weights_digest[:12]) for worker in result.workers]

# COMMAND ----------

build_catalog_index(settings, lake, result.run_id)
report = evaluate(settings, lake, result.run_id)
report.as_dict()
