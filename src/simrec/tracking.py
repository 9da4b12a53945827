"""MLflow wiring: tracking URI, experiment, and Delta lineage as a run's dataset input."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.meta_dataset import MetaDataset

from simrec.config import MlflowSettings
from simrec.lake.tables import TableVersion

_SQLITE_RELATIVE = re.compile(r"^sqlite:///(?!/)(.+)$")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
# Store names MLflow resolves itself (Databricks workspaces, Unity Catalog registry).
_NAMED_STORES = {"databricks", "databricks-uc"}


def _is_uri(text: str) -> bool:
    return text in _NAMED_STORES or bool(_URI_SCHEME.match(text))


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative sqlite path absolute so runs land in the same store from any process;
    a plain path becomes a file URI; other URIs (http, databricks, dbfs:...) stay as they are."""
    match = _SQLITE_RELATIVE.match(uri)
    if match:
        return f"sqlite:///{Path(match.group(1)).resolve()}"
    if not _is_uri(uri):
        return Path(uri).resolve().as_uri()
    return uri


def setup_mlflow(settings: MlflowSettings) -> str:
    """Point MLflow at the configured store and experiment; returns the experiment id."""
    tracking_uri = resolve_tracking_uri(settings.tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(resolve_tracking_uri(settings.registry_uri or settings.tracking_uri))
    experiment = mlflow.get_experiment_by_name(settings.experiment)
    if experiment is None:
        root = settings.artifact_root
        # None: the tracking server chooses (as Databricks does for its experiments)
        location = root if not root or _is_uri(root) else Path(root).resolve().as_uri()
        experiment_id = mlflow.create_experiment(settings.experiment, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def log_table_input(table: TableVersion, context: str) -> None:
    """Record `table` at its pinned version as an input of the active run (lineage)."""
    source = DeltaDatasetSource(path=table.path, delta_table_version=table.version)
    dataset = MetaDataset(source=source, name=f"{table.name}@v{table.version}")
    mlflow.log_input(dataset, context=context)
    mlflow.set_tags(
        {
            f"simrec.{context}.table": table.name,
            f"simrec.{context}.table_path": table.path,
            f"simrec.{context}.table_version": str(table.version),
            f"simrec.{context}.table_id": str(table.table_id or ""),
        }
    )
