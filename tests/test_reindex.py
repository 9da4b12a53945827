"""Catalog updates without retraining, end to end on real tables, MLflow and local Spark.

One small model is trained on a table of our own (real Fashion-MNIST rows copied from the
shared lake, which stays read-only) and packaged as simrec-fashion@champion (forced: so short
a training does not beat raw pixels, and the baseline gate is not what is tested here). Each
re-index is gated against the champion on the same fixed query set. The tests then
change that table the way a shop would (append items, delete items) and check what
`simrec reindex` registers, in file order: each test continues from the previous one's table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from simrec.batch.recommend import batch_recommend
from simrec.cli import app
from simrec.config import Settings
from simrec.index.reindex import reindex
from simrec.lake.catalog import ingest_catalog
from simrec.lake.tables import Lakehouse
from simrec.model.train import train
from simrec.serving.bundle import registered_lineage, resolve_version
from simrec.serving.package import PackageResult, package_run, query_frame, served_model_uri

pytestmark = pytest.mark.slow

CHAMPION = "models:/simrec-fashion@champion"
IKEA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ikea"
CATALOG_ROWS = 800  # train-split rows in the table before any update
TEST_ROWS = 100


@dataclass
class Shop:
    settings: Settings
    lake: Lakehouse
    table: str
    spare: pa.Table  # real rows of the shared lake not yet in our table
    run_id: str
    packaged: PackageResult


def _train_ids(start: int, stop: int) -> list[str]:
    return [f"fmnist-train-{position:05d}" for position in range(start, stop)]


def _rows(table: pa.Table, ids: list[str]) -> pa.Table:
    return table.filter(pc.is_in(table.column("id"), value_set=pa.array(ids)))


@pytest.fixture(scope="module")
def shop(fashion_lake, tmp_path_factory, make_settings) -> Shop:
    _, shared_lake, shared_table = fashion_lake
    root = tmp_path_factory.mktemp("reindex")
    settings = make_settings(
        root,
        **{
            "train.epochs": 1,
            "train.steps_per_epoch": 20,
            # 100 queries: one changed answer is 0.01 of Recall@1
            "promotion.max_regression": 0.03,
        },
    )
    lake = Lakehouse(settings.lake.root)
    rows = shared_lake.read(shared_table.name, shared_table.version)
    test_ids = [f"fmnist-test-{position:05d}" for position in range(TEST_ROWS)]
    initial = lake.insert_new(
        settings.lake.fashion_table, _rows(rows, _train_ids(0, CATALOG_ROWS) + test_ids)
    )
    table = lake.pin(initial.name, initial.version)
    trained = train(settings, lake, table)
    packaged = package_run(settings, lake, trained.run_id, force=True)
    assert packaged.registry_uri == CHAMPION
    spare = rows.filter(
        pc.invert(pc.is_in(rows.column("id"), value_set=lake.read(table.name).column("id")))
    )
    return Shop(settings, lake, table.name, spare, trained.run_id, packaged)


def _search(model_uri: str, images: list[bytes], k: int) -> pd.DataFrame:
    model = mlflow.pyfunc.load_model(model_uri)
    return model.predict(query_frame(images, [k] * len(images)), params={"thumbnails": False})


def _images(lake: Lakehouse, table: str, ids: list[str], version: int | None = None) -> list[bytes]:
    rows = _rows(lake.read(table, version, columns=["id", "image"]), ids)
    image_of = dict(
        zip(rows.column("id").to_pylist(), rows.column("image").to_pylist(), strict=True)
    )
    return [image_of[item_id] for item_id in ids]


def _version_count(name: str = "simrec-fashion") -> int:
    return len(mlflow.MlflowClient().search_model_versions(f"name = '{name}'"))


def test_appended_items_are_found_after_reindex(shop: Shop) -> None:
    new_ids = _train_ids(CATALOG_ROWS, CATALOG_ROWS + 50)
    new_tests = [f"fmnist-test-{position:05d}" for position in range(TEST_ROWS, TEST_ROWS + 5)]
    appended = shop.lake.insert_new(shop.table, _rows(shop.spare, new_ids + new_tests))
    assert appended.rows_added == 55

    result = reindex(shop.settings, CHAMPION)
    assert result.registered and (result.rows_added, result.rows_removed) == (50, 0)
    assert result.package.promotion.decision.passed  # a clean re-index passes the gate
    assert result.package.promotion.decision.baseline is None  # re-index: no regression only
    assert resolve_version(CHAMPION).version == result.package.version == 2  # alias moved
    assert served_model_uri(shop.settings, shop.lake) == CHAMPION  # registered: not re-packaged
    lineage = registered_lineage(CHAMPION)
    assert lineage["source_table_version"] == appended.version
    assert lineage["parent_model_version"] == 1 and lineage["rows_added"] == 50
    assert lineage["training_run_id"] == shop.run_id
    assert lineage["index_size"] == CATALOG_ROWS + 50  # the 5 test-split rows are not catalog
    tags = mlflow.MlflowClient().get_model_version("simrec-fashion", 2).tags
    assert tags["source_table_version"] == str(appended.version)

    # Every new item is its own nearest neighbour in the new version.
    found = _search(CHAMPION, _images(shop.lake, shop.table, new_ids), k=1)
    assert found["item_id"].tolist() == new_ids
    assert np.allclose(found["distance"], 0.0, atol=1e-5)
    # Same weights: the embedding SavedModel is byte for byte the parent's.
    parent, child = (
        Path(mlflow.artifacts.download_artifacts(f"models:/simrec-fashion/{v}")) for v in (1, 2)
    )
    for name in ("saved_model.pb", "variables/variables.data-00000-of-00001"):
        files = [
            next(folder.rglob(f"embedding_model/{name}")).read_bytes() for folder in (parent, child)
        ]
        assert files[0] == files[1], name


def test_deleted_items_never_come_back(shop: Shop) -> None:
    gone = ["fmnist-train-00003", "fmnist-train-00444", *_train_ids(CATALOG_ROWS, CATALOG_ROWS + 2)]
    images = _images(shop.lake, shop.table, gone)
    deleted = shop.lake.delete(shop.table, [*gone, "fmnist-test-00000"])
    assert deleted.rows_removed == 5

    result = reindex(shop.settings, CHAMPION)
    assert (result.rows_added, result.rows_removed) == (0, 4)
    found = _search(CHAMPION, images, k=100)
    assert not set(found["item_id"]) & set(gone)
    model = mlflow.pyfunc.load_model(CHAMPION)
    assert not set(model.unwrap_python_model().index.live_item_ids()) & set(gone)

    # A later update (more items) does not resurrect them.
    later = _train_ids(CATALOG_ROWS + 50, CATALOG_ROWS + 60)
    shop.lake.insert_new(shop.table, _rows(shop.spare, later))
    result = reindex(shop.settings, CHAMPION)
    assert (result.rows_added, result.rows_removed) == (10, 0)
    assert result.package.lineage["index_size"] == CATALOG_ROWS + 50 - 4 + 10
    found = _search(CHAMPION, images, k=100)
    assert not set(found["item_id"]) & set(gone)


def test_second_reindex_registers_nothing(shop: Shop) -> None:
    store = [
        f"--set=mlflow.tracking_uri={shop.settings.mlflow.tracking_uri}",
        f"--set=lake.root={shop.settings.lake.root}",
    ]
    shop.lake.delete(shop.table, ["fmnist-train-00005"])
    first = CliRunner().invoke(app, ["reindex", "--model", CHAMPION, *store])
    assert first.exit_code == 0, first.output
    assert "-1 removed" in first.output
    versions = _version_count()
    second = CliRunner().invoke(app, ["reindex", "--model", CHAMPION, *store])
    assert second.exit_code == 0, second.output
    assert "nothing to do" in second.output and _version_count() == versions

    # Rows outside the catalog (test split) are not catalog changes either.
    extra = [f"fmnist-test-{position:05d}" for position in range(TEST_ROWS + 5, TEST_ROWS + 8)]
    shop.lake.insert_new(shop.table, _rows(shop.spare, extra))
    assert not reindex(shop.settings, CHAMPION).registered
    assert _version_count() == versions

    missing = CliRunner().invoke(app, ["reindex", "--model", "models:/nope@champion", *store])
    assert missing.exit_code == 1 and "names no registered model version" in missing.output


def test_full_rebuild_agrees_with_incremental_updates(shop: Shop) -> None:
    champion = mlflow.pyfunc.load_model(CHAMPION)
    rebuilt = reindex(shop.settings, CHAMPION, alias="", full=True)
    assert rebuilt.registered and resolve_version(CHAMPION).version != rebuilt.package.version
    full = mlflow.pyfunc.load_model(rebuilt.package.registry_uri)
    live = champion.unwrap_python_model().index.live_item_ids()
    assert sorted(full.unwrap_python_model().index.live_item_ids()) == sorted(live)
    queries = _images(shop.lake, shop.table, [f"fmnist-test-{p:05d}" for p in range(1, 11)])
    frame = query_frame(queries, [5] * len(queries))
    incremental, rebuilt_answer = (
        model.predict(frame, params={"thumbnails": False}) for model in (champion, full)
    )
    assert incremental["item_id"].tolist() == rebuilt_answer["item_id"].tolist()
    assert incremental["label_name"].tolist() == rebuilt_answer["label_name"].tolist()


def test_batch_recommend_on_spark_equals_in_process(shop: Shop, spark) -> None:
    k = 3
    result = batch_recommend(shop.settings, spark, CHAMPION, k=k)
    model = mlflow.pyfunc.load_model(CHAMPION)
    lineage = model.metadata.metadata["simrec"]["lineage"]
    assert result.items == lineage["index_size"] and result.rows == result.items * k
    written = shop.lake.read(shop.settings.batch.output_table).to_pandas()
    assert len(written) == result.rows
    assert set(written["model_version"]) == {resolve_version(CHAMPION).version}
    assert set(written["source_table_version"]) == {lineage["source_table_version"]}
    assert not (written["item_id"] == written["recommended_item_id"]).any()  # no self-matches
    assert written.groupby("item_id")["rank"].apply(list).map(lambda r: r == [1, 2, 3]).all()
    history = shop.lake.history(shop.settings.batch.output_table)[0]
    assert history["simrec.model_version"] == str(resolve_version(CHAMPION).version)

    sample = sorted(written["item_id"].unique())[::97][:8]
    answer = model.predict(
        query_frame(_images(shop.lake, shop.table, sample), [k + 1] * len(sample)),
        params={"thumbnails": False},
    )
    for position, item_id in enumerate(sample):
        served = answer[(answer["query"] == position) & (answer["item_id"] != item_id)].head(k)
        batch = written[written["item_id"] == item_id].sort_values("rank")
        assert batch["recommended_item_id"].tolist() == served["item_id"].tolist(), item_id
        np.testing.assert_allclose(batch["distance"], served["distance"], atol=1e-5)


def test_batch_recommend_finds_a_moved_lake_through_lake_root(shop: Shop, spark, tmp_path) -> None:
    """The lake moved after packaging (another machine, another mount) and nothing is left at
    the path the lineage recorded: the model's table is read under lake.root. A table of the
    same name that is not the model's (dropped and re-created) is refused before any work."""
    from simrec.lake.identity import TableIdentityError

    original = Path(shop.settings.lake.root)
    moved = tmp_path / "moved-lake"
    original.rename(moved)
    try:
        settings = shop.settings.with_overrides({"lake.root": str(moved)})
        result = batch_recommend(settings, spark, CHAMPION, k=2)
        assert result.source.path == str(moved / shop.table)
        assert result.output.path == str(moved / settings.batch.output_table)
        assert result.rows == result.items * 2 > 0
        rows = Lakehouse(moved).read(shop.table)
    finally:
        moved.rename(original)

    recreated = tmp_path / "recreated-lake"
    Lakehouse(recreated).insert_new(shop.table, rows)
    with pytest.raises(TableIdentityError, match="not the table .* built from"):
        batch_recommend(
            shop.settings.with_overrides({"lake.root": str(recreated)}), spark, CHAMPION
        )


@pytest.mark.skipif(not (IKEA_DIR / "images").is_dir(), reason="IKEA dataset not available")
def test_catalog_items_table_reindexes_without_labels(shop: Shop) -> None:
    settings, lake = shop.settings, shop.lake
    ingest_catalog(lake, settings.catalog, settings.lake, max_items=30)
    unmeasured = package_run(
        settings, lake, shop.run_id, "simrec-ikea", "champion", table_name=settings.lake.items_table
    )
    # Items without labels cannot be scored: the gate refuses, unless forced.
    assert not unmeasured.promotion.promoted and unmeasured.evaluation is None
    assert "cannot measure" in unmeasured.promotion.decision.describe()
    packaged = package_run(
        settings,
        lake,
        shop.run_id,
        "simrec-ikea",
        "champion",
        table_name=settings.lake.items_table,
        force=True,
    )
    assert packaged.lineage["index_size"] == 30 and packaged.lineage["catalog_split"] is None
    ingested = ingest_catalog(lake, settings.catalog, settings.lake, max_items=45)["items"]
    assert ingested.rows_added == 15
    item_ids = sorted(lake.read(settings.lake.items_table, columns=["id"]).column("id").to_pylist())
    first_ids, new_ids = item_ids[:30], item_ids[30:]
    lake.delete(settings.lake.items_table, first_ids[:2])

    result = reindex(settings, "models:/simrec-ikea@champion", force=True)
    assert (result.rows_added, result.rows_removed) == (15, 2)
    found = _search(
        "models:/simrec-ikea@champion", _images(lake, settings.lake.items_table, new_ids[:3]), k=2
    )
    top = found[found["rank"] == 1]
    assert top["item_id"].tolist() == new_ids[:3]
    assert {"category", "name", "colour"} <= set(found.columns) and "label" not in found.columns
    assert not set(found["item_id"]) & set(first_ids[:2])


@pytest.mark.skipif(not (IKEA_DIR / "images").is_dir(), reason="IKEA dataset not available")
def test_synced_catalog_reindexes_replaced_photos_and_removed_products(
    shop: Shop, tmp_path: Path
) -> None:
    """Replace one product photo and remove one product in the source folder, `--sync`, then
    re-index: the new photo finds its product, the removed product is gone."""
    from test_catalog_ingest import BED_IN_TWO_DIFFERENT, SOFA_KEY, SUBSET_IDS, _copy_subset

    source = _copy_subset(IKEA_DIR, tmp_path / "ikea")
    settings = shop.settings.with_overrides({"lake.root": str(tmp_path / "lake")})
    lake = Lakehouse(settings.lake.root)
    items = settings.lake.items_table
    ingest_catalog(lake, settings.catalog, settings.lake, source)
    uri = "models:/simrec-ikea-sync@champion"
    package_run(
        settings, lake, shop.run_id, "simrec-ikea-sync", "champion", table_name=items, force=True
    )
    removed_image = _images(lake, items, [BED_IN_TWO_DIFFERENT])

    # a real photo of another product (not in the subset) becomes the sofa's new photo
    other = next(
        p for p in sorted((IKEA_DIR / "images" / "chair").iterdir()) if p.stem not in SUBSET_IDS
    )
    new_photo = other.read_bytes()
    (source / "images" / "couch" / f"{SOFA_KEY}.jpg").write_bytes(new_photo)
    for path in (source / "images").rglob(f"{BED_IN_TWO_DIFFERENT}.*"):
        path.unlink()
    synced = ingest_catalog(lake, settings.catalog, settings.lake, source, prune=True)
    assert (synced["items"].updated, synced["items"].deleted) == (1, 1)

    result = reindex(settings, uri, force=True)  # unlabelled items: nothing to gate on
    assert (result.rows_added, result.rows_removed, result.rows_updated) == (0, 1, 1)
    assert result.package.lineage["index_size"] == len(SUBSET_IDS) - 1
    found = _search(uri, [new_photo], k=1)
    assert found["item_id"].tolist() == [SOFA_KEY]
    assert np.allclose(found["distance"], 0.0, atol=1e-5)  # embedded from the new bytes
    found = _search(uri, removed_image, k=len(SUBSET_IDS))
    assert BED_IN_TWO_DIFFERENT not in set(found["item_id"])


def test_reindex_follows_the_configured_lake_and_checks_the_table_id(
    shop: Shop, tmp_path: Path
) -> None:
    import shutil

    from simrec.lake.identity import TableIdentityError

    lineage = registered_lineage(CHAMPION)
    assert lineage["source_table_id"] == shop.lake.pin(shop.table).table_id
    tags = mlflow.get_run(shop.run_id).data.tags
    assert tags["simrec.training.table_id"] == lineage["source_table_id"]

    # The lake moved (another machine, another mount): re-index through lake.root.
    moved = tmp_path / "moved-lake"
    shutil.copytree(shop.settings.lake.root, moved)
    moved_settings = shop.settings.with_overrides({"lake.root": str(moved)})
    Lakehouse(moved).delete(shop.table, ["fmnist-train-00006"])
    result = reindex(moved_settings, CHAMPION, alias="")  # champion stays on the shop's lake
    assert result.table.path == str(moved / shop.table) and result.rows_removed == 1

    # Same name, a different table (dropped and re-created): refused, clearly.
    recreated = tmp_path / "recreated-lake"
    rows = Lakehouse(moved).read(shop.table)
    Lakehouse(recreated).insert_new(shop.table, rows)
    with pytest.raises(TableIdentityError, match="not the table .* built from"):
        reindex(shop.settings.with_overrides({"lake.root": str(recreated)}), CHAMPION)
    cli = CliRunner().invoke(
        app,
        [
            "reindex",
            "--model",
            CHAMPION,
            f"--set=mlflow.tracking_uri={shop.settings.mlflow.tracking_uri}",
            f"--set=lake.root={recreated}",
        ],
    )
    assert cli.exit_code == 1 and "dropped and re-created" in cli.output
    assert "Traceback" not in cli.output


def test_reindex_adding_rows_with_shuffled_labels_is_refused(shop: Shop) -> None:
    """Last: it leaves mislabelled rows in the table. Many new catalog rows whose labels are
    permuted make the fixed queries' answers wrong: the gate refuses, champion stays."""
    champion = resolve_version(CHAMPION).version
    ids = _train_ids(1000, 1600)
    rows = _rows(shop.spare, ids)
    labels = np.random.default_rng(0).permutation(rows.column("label").to_numpy())
    names = dict(
        zip(rows.column("label").to_pylist(), rows.column("label_name").to_pylist(), strict=True)
    )
    rows = rows.set_column(
        rows.schema.get_field_index("label"),
        "label",
        pa.array(labels, rows.schema.field("label").type),
    )
    rows = rows.set_column(
        rows.schema.get_field_index("label_name"),
        "label_name",
        pa.array([names[int(label)] for label in labels], pa.string()),
    )
    shop.lake.insert_new(shop.table, rows)
    store = [
        f"--set=mlflow.tracking_uri={shop.settings.mlflow.tracking_uri}",
        f"--set=lake.root={shop.settings.lake.root}",
        "--set=promotion.max_regression=0.03",
    ]
    refused = CliRunner().invoke(app, ["reindex", "--model", CHAMPION, *store])
    assert refused.exit_code == 1, refused.output
    assert "+600 added" in refused.output and "gate refused" in refused.output
    assert f"worse than champion v{champion}" in refused.output
    assert resolve_version(CHAMPION).version == champion
    challenger = resolve_version("models:/simrec-fashion@challenger").version
    assert challenger > champion
    tags = mlflow.MlflowClient().get_model_version("simrec-fashion", challenger).tags
    assert tags["simrec.promotion"] == "refused"
