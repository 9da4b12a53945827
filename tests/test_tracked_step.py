"""The one helper every step opens its MLflow run with."""

from __future__ import annotations

import mlflow
import yaml

from simrec.tracking import setup_mlflow, tracked_step


def test_tracked_step_records_step_config_and_delta_inputs(fashion_lake, settings) -> None:
    _, _, table = fashion_lake
    setup_mlflow(settings.mlflow)
    with tracked_step(
        "package", settings, {"training": table}, tags={"extra": "yes"}, params={"rows": 3}
    ) as run:
        run_id = run.info.run_id
    recorded = mlflow.get_run(run_id)
    assert recorded.info.run_name == "package" and recorded.info.status == "FINISHED"
    assert recorded.data.tags["simrec.step"] == "package" and recorded.data.tags["extra"] == "yes"
    assert recorded.data.params["train.epochs"] == str(settings.train.epochs)
    assert recorded.data.params["rows"] == "3"
    assert recorded.data.tags["simrec.training.table_version"] == str(table.version)
    assert [d.dataset.name for d in recorded.inputs.dataset_inputs] == [
        f"{table.name}@v{table.version}"
    ]
    config = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/effective_config.yaml"))
    assert config == settings.model_dump(mode="json")
