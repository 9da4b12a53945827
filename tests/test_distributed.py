"""Horovod on Spark: shards streamed from the Delta snapshot, class-balanced batches, and two real
ranks on local Spark training one model that the ordinary index/evaluate steps accept."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from simrec.cli import app
from simrec.distributed.batching import ClassBalancedBatches, batched_dataset
from simrec.distributed.shards import (
    INDEX_COLUMNS,
    RowFilter,
    make_shards,
    plan_shards,
    snapshot_row_groups,
    stream_columns,
)
from simrec.distributed.train import plan_training, train_distributed
from simrec.evaluation.evaluate import evaluate
from simrec.images import decode_batch
from simrec.index.build import build_catalog_index
from simrec.lake.tables import Lakehouse
from simrec.model.data import read_split, validation_mask
from simrec.runs import latest_run_id, load_embedding_model, training_table


def _training_ids_single_process(lake: Lakehouse, table) -> set[str]:
    """The rows `model.train.train` trains on: train split minus the validation rows."""
    rows = lake.read(table.name, table.version, columns=["id", "split"])
    ids = np.asarray(rows.filter(pc.equal(rows.column("split"), "train")).column("id").to_pylist())
    return set(ids[~validation_mask(ids, 0.1)])


def _streamed_ids(shard, row_filter: RowFilter) -> list[str]:
    ids = []
    for columns in stream_columns(shard, INDEX_COLUMNS, batch_rows=500):
        ids.extend(
            columns["id"][row_filter.training(columns["id"], columns["split"], columns["label"])]
        )
    return ids


def test_one_row_group_is_sharded_by_id_hash_into_disjoint_covering_shards(fashion_lake) -> None:
    _, lake, table = fashion_lake
    row_groups = snapshot_row_groups(lake, table)
    assert len(row_groups) == 1  # how delta-rs writes one ingest commit
    row_filter = RowFilter()
    plans = plan_shards(make_shards(row_groups, 2), row_filter)
    assert [plan.shard.by_row_group for plan in plans] == [False, False]

    per_rank = [_streamed_ids(plan.shard, row_filter) for plan in plans]
    assert [len(ids) for ids in per_rank] == [plan.training_rows for plan in plans]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert set(per_rank[0]) | set(per_rank[1]) == _training_ids_single_process(lake, table)
    assert min(len(ids) for ids in per_rank) > 0.4 * sum(len(ids) for ids in per_rank)
    assert all(plan.classes == tuple(range(10)) for plan in plans)


@pytest.mark.parametrize("reader", ["pyarrow", "petastorm"])
def test_row_groups_are_split_between_ranks(fashion_lake, tmp_path: Path, reader: str) -> None:
    _, source, table = fashion_lake
    rows = source.read(table.name, table.version)
    rows = rows.take(np.random.default_rng(0).permutation(rows.num_rows))  # splits mixed
    lake = Lakehouse(tmp_path / "lakehouse")
    for start in range(0, rows.num_rows, 1500):  # four commits: four files of one row group
        lake.insert_new("fashion_mnist", rows.slice(start, 1500))
    multi = lake.pin("fashion_mnist")
    row_groups = snapshot_row_groups(lake, multi)
    assert len(row_groups) == 4

    row_filter = RowFilter()
    plans = plan_shards(make_shards(row_groups, 2, reader), row_filter)
    assert all(plan.shard.by_row_group for plan in plans)
    per_rank = [_streamed_ids(plan.shard, row_filter) for plan in plans]
    assert [len(ids) for ids in per_rank] == [plan.training_rows for plan in plans]
    assert all(per_rank)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert set(per_rank[0]) | set(per_rank[1]) == _training_ids_single_process(lake, multi)


def test_streamed_batches_are_class_balanced_and_bounded() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=3000)
    images = np.array([f"row-{i}".encode() for i in range(len(labels))], dtype=object)
    pieces = [(images[i : i + 100], labels[i : i + 100]) for i in range(0, len(labels), 100)]
    batcher = ClassBalancedBatches(classes_per_batch=4, examples_per_class=5, buffer_rows=400)

    seen, peak = [], 0
    for batch in batcher(iter(pieces)):
        peak = max(peak, batcher.buffered + len(batch))
        assert len(batch) == 20
        counts = np.unique([label for _, label in batch], return_counts=True)[1]
        assert list(counts) == [5, 5, 5, 5]
        seen.extend(image for image, _ in batch)
    assert len(seen) == len(set(seen))  # each streamed row at most once per pass
    assert len(seen) > 0.9 * len(labels)  # the pass is used up, bar the leftovers
    assert peak <= 400 + 100  # the buffer, plus one streamed piece


def test_pngs_are_decoded_in_the_pipeline_like_everywhere_else(fashion_lake) -> None:
    _, lake, table = fashion_lake
    rows = lake.read(table.name, table.version, columns=["image", "label"]).slice(0, 6)
    images, labels = rows.column("image").to_pylist(), rows.column("label").to_pylist()
    batches = [
        list(zip(images[:3], labels[:3], strict=True)),
        list(zip(images[3:], labels[3:], strict=True)),
    ]
    dataset = batched_dataset(lambda: iter(batches), batch_size=3, image_size=28, channels=1)
    decoded = [(pixels.numpy(), batch_labels.numpy()) for pixels, batch_labels in dataset]
    assert [pixels.shape for pixels, _ in decoded] == [(3, 28, 28, 1)] * 2
    pixels = np.concatenate([p for p, _ in decoded])
    assert np.array_equal(pixels, decode_batch(images, 28, 1).astype(np.float32))
    assert list(np.concatenate([b for _, b in decoded])) == labels


def test_plan_keeps_a_single_process_epoch_and_scales_the_learning_rate(
    fashion_lake, make_settings, tmp_path: Path
) -> None:
    _, lake, table = fashion_lake
    settings = make_settings(tmp_path, **{"train.steps_per_epoch": 30})
    plan = plan_training(settings, lake, table, num_proc=2)
    batch = settings.train.classes_per_batch * settings.train.examples_per_class
    assert plan.batch_per_worker == batch
    assert plan.steps_per_epoch == math.ceil(30 * batch / (2 * batch))
    assert plan.learning_rate == pytest.approx(2 * settings.train.learning_rate)
    assert plan.training_rows == len(_training_ids_single_process(lake, table))

    sliced = plan_training(settings.with_overrides({"train.max_rows": 1000}), lake, table, 2)
    first_rows = read_split(lake, table, "train", 28, 1, max_rows=1000).ids
    assert sliced.training_rows == int((~validation_mask(first_rows, 0.1)).sum())

    unscaled = settings.with_overrides({"distributed.scale_learning_rate": False})
    assert plan_training(unscaled, lake, table, 2).learning_rate == settings.train.learning_rate
    with pytest.raises(ValueError, match="multiple of"):
        plan_training(settings.with_overrides({"distributed.batch_per_worker": 50}), lake, table, 2)


@pytest.fixture(scope="module")
def distributed_run(fashion_lake, spark, tmp_path_factory, make_settings):
    _, lake, table = fashion_lake
    root = tmp_path_factory.mktemp("distributed")
    settings = make_settings(
        root,
        **{
            "lake.root": str(lake.root),
            "train.steps_per_epoch": 30,
            "distributed.num_proc": 2,
            "distributed.checkpoint_dir": str(root / "checkpoints"),
        },
    )
    return settings, lake, table, train_distributed(settings, lake, table, spark=spark), root


@pytest.mark.slow
def test_two_ranks_end_identical_and_learn(distributed_run) -> None:
    settings, _, _, result, root = distributed_run
    first, second = result.workers
    assert (first.rank, second.rank, first.size) == (0, 1, 2)
    assert first.initial_weights_digest == second.initial_weights_digest
    assert first.final_weights_digest == second.final_weights_digest
    assert first.final_weights_digest != first.initial_weights_digest
    losses = result.history["loss"]
    assert len(losses) == settings.train.epochs and losses[-1] < losses[0]
    assert result.images_per_second > 0
    checkpoints = sorted(path.name for path in (root / "checkpoints").iterdir())
    assert checkpoints == [f"epoch-{e:02d}.weights.h5" for e in range(1, settings.train.epochs + 1)]


@pytest.mark.slow
def test_rank_zero_logs_a_model_that_indexes_and_evaluates(distributed_run) -> None:
    settings, lake, table, result, _ = distributed_run
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["simrec.step"] == "train"
    assert run.data.tags["simrec.distributed.num_proc"] == "2"
    assert training_table(result.run_id) == table
    assert float(run.data.params["distributed_learning_rate"]) == pytest.approx(
        2 * settings.train.learning_rate
    )
    client = mlflow.tracking.MlflowClient()
    for metric in ("train_loss", "val_recall_at_1"):
        assert len(client.get_metric_history(result.run_id, metric)) == settings.train.epochs
    assert latest_run_id(settings.mlflow.experiment) == result.run_id
    assert load_embedding_model(result.run_id).output_shape == (None, 32)

    build_catalog_index(settings, lake, result.run_id)
    report = evaluate(settings, lake, result.run_id)
    assert report.queries == 3000
    assert report.model["recall_at_1"] > 0.5
    assert "test_recall_at_1" in mlflow.get_run(result.run_id).data.metrics


@pytest.mark.slow
def test_without_the_distributed_optimizer_the_ranks_drift_apart(
    fashion_lake, spark, tmp_path: Path, make_settings
) -> None:
    """What `hvd.DistributedOptimizer` in `compile()` prevents: each rank, fed its own shard,
    stepping on its own gradients (the Databricks original's bug)."""
    _, lake, table = fashion_lake
    settings = make_settings(
        tmp_path,
        **{"lake.root": str(lake.root), "train.epochs": 1, "train.steps_per_epoch": 10},
    )
    result = train_distributed(settings, lake, table, spark=spark, distributed_optimizer=False)
    first, second = result.workers
    assert first.initial_weights_digest == second.initial_weights_digest
    assert first.final_weights_digest != second.final_weights_digest


def test_cli_refuses_more_processes_than_spark_task_slots(fashion_lake, spark) -> None:
    settings, lake, _ = fashion_lake
    overrides = [
        f"--set=lake.root={lake.root}",
        f"--set=mlflow.tracking_uri={settings.mlflow.tracking_uri}",
    ]
    runner = CliRunner()
    outcome = runner.invoke(app, ["train", "--num-proc", "2", *overrides])
    assert outcome.exit_code == 1 and "--num-proc needs --distributed" in outcome.output
    slots = spark.sparkContext.defaultParallelism
    outcome = runner.invoke(
        app, ["train", "--distributed", "--num-proc", str(slots + 1), *overrides]
    )
    assert outcome.exit_code == 1 and f"needs {slots + 1} concurrent Spark tasks" in outcome.output
