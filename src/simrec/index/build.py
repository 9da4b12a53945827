"""The index step: embed the catalog (train split) with a run's model, build and log the index."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np

from simrec.config import Settings
from simrec.index.faiss_index import EmbeddingIndex, build_index
from simrec.lake.tables import Lakehouse
from simrec.model.data import read_split
from simrec.model.embedding import embed
from simrec.runs import INDEX_ARTIFACT, ITEMS_FILE, load_embedding_model, training_table
from simrec.tracking import setup_mlflow


@dataclass
class IndexResult:
    run_id: str
    index: EmbeddingIndex
    folder: Path


def catalog_labels(settings: Settings) -> list[int] | None:
    """The labels the catalog holds: only the held-out classes under the unseen-class protocol."""
    return settings.train.holdout_classes or None


def build_catalog_index(
    settings: Settings, lake: Lakehouse, run_id: str, output_dir: Path | None = None
) -> IndexResult:
    setup_mlflow(settings.mlflow)
    table = training_table(run_id)
    model = load_embedding_model(run_id)
    catalog = read_split(lake, table, "train", settings.model.image_size, settings.model.channels)
    labels = catalog_labels(settings)
    if labels:
        catalog = catalog.subset(np.isin(catalog.labels, labels))
    print(f"embedding {len(catalog)} catalog images")
    index = build_index(catalog.ids, embed(model, catalog.pixels), settings.index)
    names = lake.read(table.name, table.version, columns=["id", "label_name"]).to_pandas()
    items = names.set_index("id").loc[list(catalog.ids)].reset_index()
    items.insert(1, "label", catalog.labels)
    folder = Path(output_dir or tempfile.mkdtemp(prefix="simrec-index-"))
    index.save(folder)
    items.to_parquet(folder / ITEMS_FILE, index=False)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifacts(str(folder), artifact_path=INDEX_ARTIFACT)
        mlflow.log_params(
            {"index_size": len(index), **{f"index_{k}": v for k, v in index.build_params.items()}}
        )
        mlflow.set_tag("simrec.index", "built")
    return IndexResult(run_id=run_id, index=index, folder=folder)
