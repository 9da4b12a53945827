# Databricks notebook source
# MAGIC %md
# MAGIC # 07 · "Complete the look": the furniture style recommender
# MAGIC The same steps as `simrec style build`, `simrec style evaluate`, `simrec style recommend`
# MAGIC and `simrec style register`: the featurizer chosen on held-out rooms (colour, product
# MAGIC text, SqueezeNet Gram / pooled features, combinations; Gram vectors for a catalog too
# MAGIC small to choose on), one faiss index per category, HR@n against the room scenes beside
# MAGIC random ranking and a colour histogram, and the `simrec-style` pyfunc. Needs `01_ingest`
# MAGIC (the catalog tables).
# MAGIC Settings come from `load_settings()` (`SIMREC_CONFIG`).

# COMMAND ----------


from simrec.config import load_settings
from simrec.lake.tables import Lakehouse
from simrec.serving.style_promotion import register_style
from simrec.style.build import build_style
from simrec.style.evaluate import evaluate_style_run
from simrec.style.recommend import recommend_for_payload

settings = load_settings()
lake = Lakehouse(settings.lake.root)

# COMMAND ----------

built = build_style(settings, lake)
(
    built.run_id,
    len(built.catalog),
    built.bundle.meta["featurizer"],
    built.bundle.meta["featurizer_choice"],
)

# COMMAND ----------

evaluation = evaluate_style_run(settings, lake, built.run_id)

# COMMAND ----------

# MAGIC %md
# MAGIC ## A catalog photo → the nearest items of every other category

# COMMAND ----------

query = lake.read(settings.lake.items_table, columns=["id", "category", "image"]).slice(0, 1)
query = query.to_pylist()[0]
recommendations = recommend_for_payload(
    built.bundle, query["image"], n=3, own_category=query["category"]
)
[(r.category, r.item_id, round(r.distance, 3)) for r in recommendations]

# COMMAND ----------

# Registered as `challenger`, promoted to `champion` only if it beats the colour histogram.
style_model_uri, style_gate = register_style(settings, lake, built.run_id, built.folder)
style_gate.summary()
