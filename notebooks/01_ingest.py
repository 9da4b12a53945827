# Databricks notebook source
# MAGIC %md
# MAGIC # 01 · Ingest: Fashion-MNIST and the IKEA catalog into Delta tables
# MAGIC The same step as `simrec ingest fashion-mnist` and `simrec ingest catalog`. Re-running adds
# MAGIC nothing that is already there; a corrupt file fails its batch and leaves the table at its
# MAGIC previous version. Settings come from `load_settings()` (`SIMREC_CONFIG`): see
# MAGIC `notebooks/README.md` for running on a cluster.

# COMMAND ----------

from simrec.config import load_settings
from simrec.lake.catalog import ingest_catalog
from simrec.lake.fashion_mnist import ingest_fashion_mnist
from simrec.lake.tables import Lakehouse

settings = load_settings()
lake = Lakehouse(settings.lake.root)
lake.root

# COMMAND ----------

# MAGIC %md
# MAGIC ## Fashion-MNIST
# MAGIC From `fashion_mnist.source_dir`, the Debian package, or the official URLs, each file checked
# MAGIC against its sha256.

# COMMAND ----------

fashion = ingest_fashion_mnist(lake, settings.fashion_mnist, settings.lake.fashion_table)
fashion

# COMMAND ----------

# MAGIC %md
# MAGIC ## IKEA catalog
# MAGIC Items, room scenes and which items appear in which rooms: three tables.

# COMMAND ----------

catalog = ingest_catalog(lake, settings.catalog, settings.lake)
catalog

# COMMAND ----------

# MAGIC %md
# MAGIC ## Table history
# MAGIC Every ingest is one Delta version; training pins one of them.

# COMMAND ----------

lake.history(settings.lake.fashion_table)
