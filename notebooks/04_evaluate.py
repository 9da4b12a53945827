# Databricks notebook source
# MAGIC %md
# MAGIC # 04 · Evaluate the newest indexed model
# MAGIC The same step as `simrec evaluate`: Recall@1/@5 of test-split queries against the index and
# MAGIC MAP@R, beside raw-pixel kNN on the same queries; metrics and a result grid are logged to the
# MAGIC training run. Needs `03_train`. Settings come from `load_settings()` (`SIMREC_CONFIG`).

# COMMAND ----------

from simrec.config import load_settings
from simrec.evaluation.evaluate import evaluate
from simrec.lake.tables import Lakehouse
from simrec.runs import latest_run_id
from simrec.tracking import setup_mlflow

settings = load_settings()
setup_mlflow(settings.mlflow)
run_id = latest_run_id(settings.mlflow.experiment, require_index=True)
run_id

# COMMAND ----------

report = evaluate(settings, Lakehouse(settings.lake.root), run_id)
report.as_dict()
