# Databricks notebook source
# MAGIC %md
# MAGIC # simrec: ingest → train → index → evaluate
# MAGIC Thin over `simrec` functions: the same steps as `simrec pipeline`. Point it at a cluster
# MAGIC by config (`spark.master`, `mlflow.tracking_uri`, `lake.root`); see the README.

# COMMAND ----------

from simrec.config import load_settings
from simrec.evaluation.evaluate import evaluate
from simrec.index.build import build_catalog_index
from simrec.lake.fashion_mnist import ingest_fashion_mnist
from simrec.lake.tables import Lakehouse
from simrec.model.train import train

# Overrides for a quick run; drop them for the full defaults.
settings = load_settings(overrides=["train.epochs=2", "train.steps_per_epoch=100"])
lake = Lakehouse(settings.lake.root)

# COMMAND ----------

ingested = ingest_fashion_mnist(lake, settings.fashion_mnist, settings.lake.fashion_table)
table = lake.pin(ingested.name, ingested.version)
table

# COMMAND ----------

result = train(settings, lake, table)
build_catalog_index(settings, lake, result.run_id)

# COMMAND ----------

report = evaluate(settings, lake, result.run_id)
report.as_dict()
