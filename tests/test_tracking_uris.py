"""Tracking URIs from the config: local paths become absolute, cluster stores pass through."""

from __future__ import annotations

from pathlib import Path

import pytest

from simrec.tracking import resolve_tracking_uri


@pytest.mark.parametrize(
    "uri",
    [
        "http://mlflow.mlflow.svc.cluster.local:5000",
        "databricks",
        "databricks://my-profile",
        "databricks-uc",
        "sqlite:////abs/mlflow.db",
        "dbfs:/mnt/mlruns",
    ],
)
def test_cluster_stores_pass_through(uri: str) -> None:
    assert resolve_tracking_uri(uri) == uri


def test_local_stores_become_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("mlruns") == (tmp_path / "mlruns").as_uri()
