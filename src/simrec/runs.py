"""Finding a training run and loading what it produced (model, index, item metadata)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import tensorflow as tf

from simrec.index.faiss_index import EmbeddingIndex
from simrec.lake.tables import TableVersion

INDEX_ARTIFACT = "index"
ITEMS_FILE = "items.parquet"


def newest_finished_run_id(experiment: str, filter_string: str) -> str | None:
    """The newest FINISHED run of `experiment` matching `filter_string`, or None."""
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"{filter_string} and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def latest_run_id(experiment: str, require_index: bool = False) -> str:
    """The newest finished training run of `experiment` (optionally one that has an index)."""
    query = "tags.`simrec.step` = 'train'"
    if require_index:
        query += " and tags.`simrec.index` = 'built'"
    run_id = newest_finished_run_id(experiment, query)
    if run_id is None:
        needs = "`simrec train` and `simrec index`" if require_index else "`simrec train`"
        raise LookupError(
            f"no finished training run in experiment {experiment!r}; run {needs} first"
        )
    return run_id


def training_table(run_id: str) -> TableVersion:
    """The Delta table and version the run trained on (from its lineage tags)."""
    tags = mlflow.get_run(run_id).data.tags
    return TableVersion(
        name=tags["simrec.training.table"],
        path=tags["simrec.training.table_path"],
        version=int(tags["simrec.training.table_version"]),
        table_id=tags.get("simrec.training.table_id") or None,
    )


def load_embedding_model(run_id: str) -> tf.keras.Model:
    import tensorflow_similarity.layers  # noqa: F401  (registers MetricEmbedding for loading)

    import simrec.model.mirror  # noqa: F401  (registers the mirror-averaging layers)

    return mlflow.tensorflow.load_model(f"runs:/{run_id}/model")


@dataclass
class IndexBundle:
    index: EmbeddingIndex
    items: pd.DataFrame  # one row per indexed item: id, label, label_name


def load_index(run_id: str) -> IndexBundle:
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=INDEX_ARTIFACT))
    return IndexBundle(EmbeddingIndex.load(folder), pd.read_parquet(folder / ITEMS_FILE))
