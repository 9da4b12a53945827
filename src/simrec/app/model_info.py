"""Which registered model answers: name, version, alias and the Delta table version it learnt
from, read from the MLflow registry and the version's run tags (shown under each answer)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))?$")
_TRAINING_RUN_TAG = "simrec.training_run_id"
_TABLE_VERSION_TAG = re.compile(r"^simrec\.(?P<context>[a-z_]+)\.table_version$")
# The table the model learnt from, in order of preference (fashion: training; style: catalog).
_CONTEXTS = ("training", "style_catalog")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str | None = None
    alias: str | None = None
    table: str | None = None
    table_version: str | None = None

    def describe(self) -> str:
        text = self.name
        if self.version:
            text += f" v{self.version}"
        if self.alias:
            text += f" (@{self.alias})"
        if self.table and self.table_version is not None:
            text += f", trained on {self.table} v{self.table_version}"
        return text


def _table_version(client, run_id: str) -> tuple[str | None, str | None]:
    """(table, version) from the run's lineage tags; a package run points at its training run."""
    tags = client.get_run(run_id).data.tags
    found = {}
    for key, value in tags.items():
        match = _TABLE_VERSION_TAG.match(key)
        if match:
            context = match.group("context")
            found[context] = (tags.get(f"simrec.{context}.table"), value)
    for context in _CONTEXTS:
        if context in found:
            return found[context]
    if _TRAINING_RUN_TAG in tags and tags[_TRAINING_RUN_TAG] != run_id:
        return _table_version(client, tags[_TRAINING_RUN_TAG])
    return next(iter(found.values()), (None, None))


def registered_model_info(model_uri: str) -> ModelInfo:
    """What the registry says about `models:/name@alias` (or `/version`); for any other URI,
    or when the registry cannot say, just the URI."""
    match = _MODEL_URI.match(model_uri)
    if not match:
        return ModelInfo(name=model_uri)
    name, alias = match.group("name"), match.group("alias")
    try:
        from mlflow import MlflowClient

        client = MlflowClient()
        if alias:
            version = client.get_model_version_by_alias(name, alias)
        else:
            version = client.get_model_version(name, match.group("version"))
        table, table_version = (None, None)
        if version.run_id:
            table, table_version = _table_version(client, version.run_id)
    except MlflowException as error:
        log.warning("cannot read %s from the registry: %s", model_uri, error)
        return ModelInfo(name=name, alias=alias)
    return ModelInfo(name, str(version.version), alias, table, table_version)
