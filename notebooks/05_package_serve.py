# Databricks notebook source
# MAGIC %md
# MAGIC # 05 · Package, register and serve the fashion model
# MAGIC The same steps as `simrec package` and `simrec serve`: the newest indexed run is bundled
# MAGIC (model + faiss index + metadata + thumbnails) as one `mlflow.pyfunc` model, registered
# MAGIC and aliased `champion`. The served app is MLflow's scoring server behind the bearer-token
# MAGIC guard; here it answers in-process through a test client. On a cluster, serve it with
# MAGIC the container image (`deploy/k8s/`) or
# MAGIC `simrec serve --model-uri models:/simrec-fashion@champion`.
# MAGIC Needs `03_train`. Settings come from `load_settings()` (`SIMREC_CONFIG`).

# COMMAND ----------

import secrets

import mlflow
from starlette.testclient import TestClient

from simrec.config import load_settings
from simrec.lake.tables import Lakehouse
from simrec.runs import latest_run_id
from simrec.serving.package import package_run, query_frame
from simrec.serving.server import create_app
from simrec.tracking import setup_mlflow

settings = load_settings()
lake = Lakehouse(settings.lake.root)
setup_mlflow(settings.mlflow)
run_id = latest_run_id(settings.mlflow.experiment, require_index=True)

# COMMAND ----------

packaged = package_run(settings, lake, run_id)
packaged.registry_uri, packaged.lineage

# COMMAND ----------

# MAGIC %md
# MAGIC ## In-process predictions from the registered model

# COMMAND ----------

model = mlflow.pyfunc.load_model(packaged.registry_uri)
queries = lake.read(settings.lake.fashion_table, columns=["id", "image"]).slice(0, 2).to_pylist()
frame = query_frame([row["image"] for row in queries], ks=[3, 3])
model.predict(frame, params={"thumbnails": False})

# COMMAND ----------

# MAGIC %md
# MAGIC ## The served endpoint: no token → 401, the right token → results

# COMMAND ----------

token = secrets.token_urlsafe(32)
client = TestClient(create_app(model, token, settings.serving.max_body_bytes))
body = {"dataframe_split": frame.to_dict(orient="split", index=False)}
unauthorised = client.post("/invocations", json=body)
answered = client.post("/invocations", json=body, headers={"Authorization": f"Bearer {token}"})
unauthorised.status_code, answered.status_code, answered.json()["predictions"][:3]
