"""Train → index → evaluate → recommend on a real Fashion-MNIST slice, tracked in real MLflow."""

from __future__ import annotations

import io
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from simrec.cli import app
from simrec.evaluation.evaluate import evaluate
from simrec.evaluation.retrieval import retrieval_report
from simrec.index.build import build_catalog_index
from simrec.model.data import read_split
from simrec.model.embedding import build_similarity_model, embed, embedding_model
from simrec.model.train import train
from simrec.runs import latest_run_id, load_embedding_model, load_index


@pytest.fixture(scope="module")
def trained(fashion_lake, tmp_path_factory, make_settings):
    base, lake, table = fashion_lake
    root = tmp_path_factory.mktemp("trained")
    settings = make_settings(root, **{"lake.root": str(lake.root)})
    result = train(settings, lake, table)
    return settings, lake, table, result


def test_training_logs_config_lineage_and_curves(trained) -> None:
    settings, _, table, result = trained
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == str(settings.train.epochs)
    assert run.data.tags["simrec.training.table_version"] == str(table.version)
    dataset_inputs = run.inputs.dataset_inputs
    assert [d.dataset.name for d in dataset_inputs] == [f"{table.name}@v{table.version}"]
    assert str(table.version) in dataset_inputs[0].dataset.source
    client = mlflow.tracking.MlflowClient()
    assert len(client.get_metric_history(result.run_id, "train_loss")) == settings.train.epochs
    assert len(client.get_metric_history(result.run_id, "val_recall_at_1")) == settings.train.epochs
    assert "effective_config.yaml" in [a.path for a in client.list_artifacts(result.run_id)]


def test_the_logged_model_names_what_loading_it_needs(trained) -> None:
    """Its pip requirements are named and pinned, not inferred by MLflow (which loads the model
    in a subprocess for ~15 s and, doing so, missed tensorflow-similarity)."""
    from importlib.metadata import version

    _, _, _, result = trained
    folder = Path(mlflow.artifacts.download_artifacts(result.model_uri))
    requirements = (folder / "requirements.txt").read_text().split()
    assert f"tensorflow-similarity=={version('tensorflow-similarity')}" in requirements
    assert f"tensorflow=={version('tensorflow')}" in requirements
    assert f"simrec=={version('simrec')}" in requirements  # the mirror-averaging layers


def test_trained_embedding_beats_the_untrained_network(trained) -> None:
    settings, lake, table, result = trained
    test_rows = read_split(lake, table, "test", 28, 1, max_rows=1000)
    references = read_split(lake, table, "train", 28, 1)
    trained_model = load_embedding_model(result.run_id)
    untrained = embedding_model(
        build_similarity_model(settings.model, seed=settings.train.seed),
        settings.model.mirror_average,
    )

    def recall(model) -> float:
        return retrieval_report(
            embed(model, test_rows.pixels),
            test_rows.labels,
            embed(model, references.pixels),
            references.labels,
            [1],
            with_map_at_r=False,
        )["recall_at_1"]

    trained_recall, untrained_recall = recall(trained_model), recall(untrained)
    assert trained_recall > untrained_recall + 0.03, (trained_recall, untrained_recall)
    random_vectors = np.random.default_rng(0).normal(size=(len(test_rows), 32))
    assert (
        trained_recall
        > 0.5
        > retrieval_report(
            random_vectors,
            test_rows.labels,
            random_vectors,
            test_rows.labels,
            [1],
            with_map_at_r=False,
            exclude_self=True,
        )["recall_at_1"]
    )


def test_index_evaluate_and_recommend(trained, tmp_path: Path) -> None:
    settings, lake, table, result = trained
    built = build_catalog_index(settings, lake, result.run_id)
    assert len(built.index) == 3000
    bundle = load_index(result.run_id)
    assert len(bundle.index) == 3000 and len(bundle.items) == 3000

    report = evaluate(settings, lake, result.run_id)
    assert report.queries == 3000
    assert set(report.model) >= {"recall_at_1", "recall_at_5", "map_at_r"}
    assert 0 < report.baseline["recall_at_1"] <= 1
    # Independently: the Keras model's own embeddings, searched by brute force.
    queries = read_split(lake, table, "test", 28, 1)
    references = read_split(lake, table, "train", 28, 1)
    keras_model = load_embedding_model(result.run_id)
    exact = retrieval_report(
        embed(keras_model, queries.pixels),
        queries.labels,
        embed(keras_model, references.pixels),
        references.labels,
        [1, 5],
    )
    assert report.model["recall_at_1"] == pytest.approx(exact["recall_at_1"], abs=0.005)
    assert report.model["map_at_r"] == pytest.approx(exact["map_at_r"], abs=0.005)
    assert sum(report.per_class.values()) / 10 == pytest.approx(
        report.model["recall_at_1"], abs=0.02
    )
    client = mlflow.tracking.MlflowClient()
    artifacts = [a.path for a in client.list_artifacts(result.run_id, "evaluation")]
    assert {"evaluation/result_grid.png", "evaluation/embedding_map.png"} <= set(artifacts)
    assert "test_recall_at_1" in mlflow.get_run(result.run_id).data.metrics
    assert latest_run_id(settings.mlflow.experiment, require_index=True) == result.run_id

    # A catalog image queried through the CLI finds itself first.
    # A catalog (train split) row: deltalake does not keep the written row order within a file.
    rows = lake.read(table.name, table.version, columns=["id", "split", "image"])
    row = next(r for r in rows.to_pylist() if r["split"] == "train")
    query = tmp_path / "query.jpg"
    Image.open(io.BytesIO(row["image"])).save(query)  # a re-encoded JPEG, not the stored PNG
    overrides = [
        f"--set=lake.root={lake.root}",
        f"--set=mlflow.tracking_uri={settings.mlflow.tracking_uri}",
    ]
    outcome = CliRunner().invoke(app, ["recommend", "--image", str(query), "-k", "3", *overrides])
    assert outcome.exit_code == 0, outcome.output
    lines = outcome.output.strip().splitlines()
    results = lines[[line.split()[:1] for line in lines].index(["rank"]) + 1 :]
    assert len(results) == 3 and results[0].split()[1] == row["id"]

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    outcome = CliRunner().invoke(app, ["recommend", "--image", str(broken), *overrides])
    assert outcome.exit_code == 1 and "not a readable image" in outcome.output


def test_without_a_validation_split_every_row_trains_and_the_last_epoch_is_kept(
    fashion_lake, make_settings, tmp_path
) -> None:
    # The default (train.validation_fraction: 0): knobs are chosen by `simrec tune` on its own
    # validation rows; the final model learns from every training row.
    _, lake, table = fashion_lake
    overrides = {"train.validation_fraction": 0.0, "train.epochs": 2, "train.steps_per_epoch": 5}
    settings = make_settings(tmp_path, **overrides)
    result = train(settings, lake, table)
    params = mlflow.get_run(result.run_id).data.params
    model = settings.model
    every_row = len(read_split(lake, table, "train", model.image_size, model.channels))
    assert (params["train_rows"], params["validation_rows"]) == (str(every_row), "0")
    assert result.best_epoch == 0  # no epoch was chosen: the last one's weights are logged
    client = mlflow.tracking.MlflowClient()
    assert client.get_metric_history(result.run_id, "val_recall_at_1") == []
    assert len(client.get_metric_history(result.run_id, "train_loss")) == 2
