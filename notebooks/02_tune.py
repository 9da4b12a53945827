# Databricks notebook source
# MAGIC %md
# MAGIC # simrec: hyperparameter search
# MAGIC Thin over `simrec.tuning.search.tune`: the same search as `simrec tune`. Trials run as
# MAGIC Spark jobs (`SparkTrials`) on this notebook's Spark session, each one a nested MLflow run
# MAGIC under one parent run; the best knobs go to `best.yaml` for `simrec train --params`.
# MAGIC The search space is `tuning.space` in `conf/simrec.yaml`; see the README.

# COMMAND ----------

from simrec.config import load_settings
from simrec.lake.tables import Lakehouse
from simrec.spark import get_spark
from simrec.tuning.search import tune

settings = load_settings()  # the budget and the space: the `tuning` section of the config
lake = Lakehouse(settings.lake.root)
table = lake.pin(settings.lake.fashion_table)  # run notebook 01 (or `simrec ingest`) first
spark = get_spark(settings.spark)  # on Databricks: the cluster's session

# COMMAND ----------

result = tune(settings, lake, table, spark=spark)
print(f"best validation Recall@1 {result.best_val_recall_at_1:.4f}: {result.best_params}")

# COMMAND ----------

import pandas as pd  # noqa: E402

pd.DataFrame(
    [
        {"trial": t.tid, "status": t.status, "val_recall_at_1": t.val_recall_at_1, **t.params}
        for t in result.trials
    ]
)

# COMMAND ----------

# MAGIC %md
# MAGIC Train the final model: the configured defaults plus the best knobs, on all the rows
# MAGIC (what `simrec train --params best.yaml` does).

# COMMAND ----------

from simrec.model.train import train  # noqa: E402

final = train(settings.with_overrides(result.best_params), lake, table, run_name="train-best")
print(f"run {final.run_id}: validation Recall@1 {final.val_recall_at_1:.4f}")
