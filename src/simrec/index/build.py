"""The index step on a training run: the catalog embedded with the run's model exported exactly
as a bundle exports it (uint8 pixels in), through the bundle's own `embed_catalog`; the index,
its items and that SavedModel logged to the run, so `simrec evaluate` / `simrec recommend`
on a run answer as a packaged bundle of it would."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow

from simrec.config import Settings
from simrec.index.faiss_index import EmbeddingIndex
from simrec.index.scope import CatalogScope, metadata_columns
from simrec.lake.tables import Lakehouse
from simrec.runs import INDEX_ARTIFACT, ITEMS_FILE, load_embedding_model, training_table
from simrec.tracking import setup_mlflow

log = logging.getLogger(__name__)

EMBEDDING_MODEL_DIR = "embedding_model"  # inside the run's index artifact


@dataclass
class IndexResult:
    run_id: str
    index: EmbeddingIndex
    folder: Path


def build_catalog_index(
    settings: Settings, lake: Lakehouse, run_id: str, output_dir: Path | None = None
) -> IndexResult:
    from simrec.serving.bundle import saved_model_embedder
    from simrec.serving.package import bundle_config, embed_catalog, export_embedding_model

    setup_mlflow(settings.mlflow)
    table = training_table(run_id)
    rows = lake.read(table.name, table.version)
    scope = CatalogScope.for_table(rows.column_names, settings)
    folder = Path(output_dir or tempfile.mkdtemp(prefix="simrec-index-"))
    model_dir = export_embedding_model(
        load_embedding_model(run_id),
        folder / EMBEDDING_MODEL_DIR,
        settings.model.image_size,
        settings.model.channels,
    )
    batch_size = settings.reindex.embed_batch_size
    catalog = scope.select(rows)
    log.info("embedding %d catalog images", catalog.num_rows)
    bundle = embed_catalog(
        catalog,
        saved_model_embedder(model_dir, batch_size),
        bundle_config(settings),
        settings.index,
        metadata_columns(rows.column_names),
        settings.serving.thumbnail_size,
        batch_size,
        with_thumbnails=False,
    )
    bundle.index.save(folder)
    bundle.items.to_parquet(folder / ITEMS_FILE, index=False)
    index = bundle.index
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        mlflow.log_artifacts(str(folder), artifact_path=INDEX_ARTIFACT)
        mlflow.log_params(
            {"index_size": len(index), **{f"index_{k}": v for k, v in index.build_params.items()}}
        )
        mlflow.set_tag("simrec.index", "built")
    return IndexResult(run_id=run_id, index=index, folder=folder)


def run_artifacts(run_id: str, destination: Path) -> dict[str, str]:
    """A run's index artifact downloaded under `destination`, by bundle artifact key."""
    from simrec.serving.pyfunc import EMBEDDING_MODEL_ARTIFACT, ITEMS_ARTIFACT
    from simrec.serving.pyfunc import INDEX_ARTIFACT as BUNDLE_INDEX

    folder = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=INDEX_ARTIFACT, dst_path=str(destination)
        )
    )
    if not (folder / EMBEDDING_MODEL_DIR).is_dir():
        raise LookupError(f"run {run_id}'s index predates bundled embedding models: re-index it")
    return {
        EMBEDDING_MODEL_ARTIFACT: str(folder / EMBEDDING_MODEL_DIR),
        BUNDLE_INDEX: str(folder),
        ITEMS_ARTIFACT: str(folder / ITEMS_FILE),
    }
