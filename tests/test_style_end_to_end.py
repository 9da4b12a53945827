"""Style build → evaluate → train (held-out split) → recommend → `simrec-style` pyfunc, through
the CLI and real MLflow, on a slice of the real IKEA catalog (chairs, tables, sofas)."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from simrec.cli import app
from simrec.lake.catalog import ingest_catalog
from simrec.lake.tables import Lakehouse
from simrec.serving.server import create_app
from simrec.style.catalog import holdout_mask
from simrec.style.runs import latest_style_run_id, load_run_bundle

pytestmark = pytest.mark.slow

IKEA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ikea"
SLICE = {
    "style.categories": ["chair", "table", "sofa"],
    "style.featurizer": "gram",  # the Gram path end to end; selection: test_style_select
    "style.backbone": "vgg16",
    "style.weights": "random",
    "style.image_size": 48,
    "style.layers": ["block1_conv2", "block2_conv2"],
    "style.layer_weights": [1.0, 1.0],
    "style.pca_dims": 16,
    "style.pairs": ["chair:table", "table:chair", "sofa:table"],
    "style.train.augment_views": 1,
    "style.train.epochs": 2,
    "style.train.steps_per_epoch": 5,
    "style.train.hidden_units": 32,
    "style.train.embedding_dim": 16,
}


def _args(settings_root: Path) -> list[str]:
    values = {
        "lake.root": settings_root / "lakehouse",
        "mlflow.tracking_uri": f"sqlite:///{settings_root / 'mlflow.db'}",
        "mlflow.artifact_root": settings_root / "mlruns",
        **SLICE,
    }
    return [f"--set={key}={value}" for key, value in values.items()]


SLICE_FOLDERS = ("chair", "dining table", "couch")


def _ikea_slice(target: Path) -> Path:
    """The real pickles and the photos of three product folders (no room photos: the item-room
    pairs come from the pickles), so the ingest reads ~260 images instead of ~2,500."""
    shutil.copytree(IKEA_DIR / "text_data", target / "text_data")
    for folder in SLICE_FOLDERS:
        shutil.copytree(IKEA_DIR / "images" / folder, target / "images" / folder)
    return target


@pytest.fixture(scope="module")
def ikea_lake(tmp_path_factory: pytest.TempPathFactory, make_settings):
    if not (IKEA_DIR / "images").is_dir():
        pytest.skip(f"IKEA dataset not found at {IKEA_DIR}")
    root = tmp_path_factory.mktemp("style_e2e")
    settings = make_settings(root, **SLICE)
    lake = Lakehouse(settings.lake.root)
    source = _ikea_slice(root / "ikea")
    ingest_catalog(lake, settings.catalog, settings.lake, source_dir=source)
    return root, settings, lake


def _png(rgb: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (60, 40), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def test_build_evaluate_train_recommend_and_serve(ikea_lake, tmp_path: Path) -> None:
    root, settings, lake = ikea_lake
    runner = CliRunner()
    args = _args(root)

    built = runner.invoke(app, ["style", "build", *args])
    assert built.exit_code == 0, built.output
    assert "chair:table" in built.output and "HR@5" in built.output
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    build_run = latest_style_run_id(settings.mlflow.experiment, kind="gram")
    run = mlflow.get_run(build_run)
    assert run.data.tags["simrec.style_catalog.table_version"] == str(lake.version("catalog_items"))
    metrics = run.data.metrics
    assert metrics["style_chair_table_queries"] == 83  # every chair sharing a room with a table
    for n in (5, 10, 20):
        assert 0 <= metrics[f"style_chair_table_hr_at_{n}"] <= 1
        assert metrics[f"style_chair_table_random_hr_at_{n}"] == pytest.approx(
            {5: 0.0742, 10: 0.1442, 20: 0.2702}[n], abs=5e-4
        )

    evaluated = runner.invoke(
        app,
        ["style", "evaluate", "--pairs", "chair:table,bed:pillow", "--run-id", build_run, *args],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "bed:pillow" in evaluated.output  # beds are not indexed: zero queries, reported

    trained = runner.invoke(app, ["style", "train", *args])
    assert trained.exit_code == 0, trained.output
    train_run = latest_style_run_id(settings.mlflow.experiment, kind="learned")
    assert latest_style_run_id(settings.mlflow.experiment) == train_run  # newest of either kind
    bundle = load_run_bundle(train_run)
    split = bundle.meta["split"]
    held = holdout_mask(bundle.items["id"], split["folds"], split["holdout_fold"])
    assert split["heldout_items"] == int(held.sum()) and split["train_items"] == int((~held).sum())
    heldout_queries = mlflow.get_run(train_run).data.metrics["heldout_learned_chair_table_queries"]
    assert 0 < heldout_queries < 83

    query = tmp_path / "orange.png"
    query.write_bytes(_png((220, 120, 40)))
    recommended = runner.invoke(
        app,
        [
            "style",
            "recommend",
            "--image",
            str(query),
            "--to",
            "table,sofa",
            "-n",
            "3",
            "--run-id",
            build_run,
            *args,
        ],
    )
    assert recommended.exit_code == 0, recommended.output
    lines = recommended.output.splitlines()
    header = next(i for i, line in enumerate(lines) if "item id" in line)
    rows = [line.split() for line in lines[header + 1 :] if line.strip()]
    assert [row[0] for row in rows] == ["table"] * 3 + ["sofa"] * 3

    # The gate: HR@10 over the judged pairs against the colour histogram on the same queries.
    judged = ["--set=style.min_queries=1"]
    lenient = [*args, *judged, "--set=promotion.style_min_margin_over_colour=-1.0"]
    registered = runner.invoke(app, ["style", "register", "--run-id", train_run, *lenient])
    assert registered.exit_code == 0, registered.output
    assert "gate passed" in registered.output and "no champion yet" in registered.output
    strict = [*args, *judged, "--set=promotion.style_min_margin_over_colour=1.0"]
    refused = runner.invoke(app, ["style", "register", "--run-id", train_run, *strict])
    assert refused.exit_code == 1, refused.output
    assert "gate refused" in refused.output and "mean_hr_at_10" in refused.output
    assert "does not beat colour histogram" in refused.output and "champion v1" in refused.output
    client = mlflow.MlflowClient()
    assert int(client.get_model_version_by_alias("simrec-style", "champion").version) == 1
    assert int(client.get_model_version_by_alias("simrec-style", "challenger").version) == 2
    model = mlflow.pyfunc.load_model("models:/simrec-style@champion")
    frame = pd.DataFrame(
        {
            "image": [
                base64.b64encode(_png((40, 40, 40))).decode(),
                base64.b64encode(query.read_bytes()).decode(),
            ],
            "k": [2, 1],
            "categories": ["chair", "table,sofa"],
        }
    )
    answer = model.predict(frame)
    assert list(answer.columns) == ["query", "category", "rank", "item_id", "name", "distance"]
    assert answer[answer["query"] == 0]["category"].tolist() == ["chair", "chair"]
    assert answer[answer["query"] == 1]["category"].tolist() == ["table", "sofa"]
    assert np.all(np.isfinite(answer["distance"]))

    # The same authenticated server as the fashion model serves it.
    server = create_app(model, "style-test-token-0123456789", 1 << 20)
    body = {"dataframe_records": [{"image": frame["image"][1], "k": 2, "categories": "table"}]}

    async def call(headers: dict[str, str]) -> httpx.Response:
        transport = httpx.ASGITransport(app=server)
        async with httpx.AsyncClient(transport=transport, base_url="http://style") as client:
            return await client.post("/invocations", json=body, headers=headers)

    assert asyncio.run(call({})).status_code == 401
    served = asyncio.run(call({"Authorization": "Bearer style-test-token-0123456789"}))
    assert served.status_code == 200, served.text
    predictions = served.json()["predictions"]
    assert [row["category"] for row in predictions] == ["table", "table"]
