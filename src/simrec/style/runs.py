"""Finding a style run in MLflow and loading its bundle."""

from __future__ import annotations

from pathlib import Path

import mlflow

from simrec.runs import newest_finished_run_id
from simrec.style.build import BUNDLE_ARTIFACT, BUNDLE_TAG
from simrec.style.bundle import StyleBundle


def latest_style_run_id(experiment: str, kind: str | None = None) -> str:
    """The newest finished run with a style bundle (`kind`: "selected", "gram" or "learned",
    or any)."""
    query = f"tags.`{BUNDLE_TAG}` {'= ' + repr(kind) if kind else 'LIKE ' + repr('%')}"
    run_id = newest_finished_run_id(experiment, query)
    if run_id is None:
        raise LookupError(
            f"no finished style run in experiment {experiment!r}; run `simrec style build` "
            "(or `simrec style train`) first"
        )
    return run_id


def bundle_folder(run_id: str) -> Path:
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=BUNDLE_ARTIFACT))


def load_run_bundle(run_id: str) -> StyleBundle:
    return StyleBundle.load(bundle_folder(run_id))
