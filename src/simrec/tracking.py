"""MLflow wiring: tracking URI, experiment, and Delta lineage as a run's dataset input."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import yaml
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.meta_dataset import MetaDataset

from simrec.config import MlflowSettings
from simrec.lake.tables import TableVersion

if TYPE_CHECKING:
    from simrec.config import Settings

_SQLITE_RELATIVE = re.compile(r"^sqlite:///(?!/)(.+)$")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
# Store names MLflow resolves itself (Databricks workspaces, Unity Catalog registry).
_NAMED_STORES = {"databricks", "databricks-uc"}


def pinned_requirements(distributions: tuple[str, ...]) -> list[str]:
    """`name==installed version` for each distribution: a logged model's pip requirements,
    named rather than inferred (MLflow's inference loads the model in a subprocess, ~15 s
    per model here, and guesses from what that load happened to import)."""
    return [f"{name}=={version(name)}" for name in distributions]


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


EFFECTIVE_CONFIG_FILE = "effective_config.yaml"
STEP_TAG = "simrec.step"


@contextmanager
def tracked_step(
    step: str,
    settings: Settings | None = None,
    tables: dict[str, TableVersion] | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    nested: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """One pipeline step's MLflow run, opened the same way everywhere: `simrec.step` tag (and
    `tags`), the effective config as params and as `effective_config.yaml`, each of `tables`
    as a Delta dataset input by context, then `params`. Setup of the store is the caller's."""
    with mlflow.start_run(run_name=run_name or step, nested=nested) as run:
        mlflow.set_tags({STEP_TAG: step, **(tags or {})})
        if settings is not None:
            mlflow.log_params(settings.flat())
            mlflow.log_text(
                yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False),
                EFFECTIVE_CONFIG_FILE,
            )
        for context, table in (tables or {}).items():
            log_table_input(table, context=context)
        if params:
            mlflow.log_params(params)
        yield run
