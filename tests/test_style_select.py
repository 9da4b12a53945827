"""`simrec style select` on a slice of the real IKEA catalog (chairs, tables, sofas) with the
real SqueezeNet ImageNet weights: the featurizer is chosen on held-out rooms, the winner is
registered, and held out it beats random on chair → table by a clear margin."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from simrec.cli import app
from simrec.lake.catalog import ingest_catalog
from simrec.lake.tables import Lakehouse
from simrec.style.select import HELDOUT_FILE, VALIDATION_FILE, heldout_figures

pytestmark = pytest.mark.slow

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IKEA_DIR = SHARED / "ikea"
WEIGHTS = SHARED / "weights" / "squeezenet_v1.1_imagenet_notop.h5"
SLICE_FOLDERS = ("chair", "dining table", "couch")
MARGIN = 0.15  # held-out HR@10 above the random expectation, chair → table
CANDIDATES = [["colour"], ["text"], ["pooled_squeezenet"], ["colour_fg", "text"]]


def _slice(target: Path) -> Path:
    shutil.copytree(IKEA_DIR / "text_data", target / "text_data")
    for folder in SLICE_FOLDERS:
        shutil.copytree(IKEA_DIR / "images" / folder, target / "images" / folder)
    return target


def _args(root: Path) -> list[str]:
    values = {
        "lake.root": root / "lakehouse",
        "mlflow.tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "mlflow.artifact_root": root / "mlruns",
        "style.categories": ["chair", "table", "sofa"],
        "style.image_size": 64,
        "style.squeezenet.path": WEIGHTS,
        "style.select.candidates": json.dumps(CANDIDATES),
        "style.select.weight_grid": [0.5, 1.0, 2.0],
        "style.select.two_hop_rooms": 0,
        "style.select.bootstrap": 200,
        "style.select.cache_dir": root / "features",
    }
    return [f"--set={key}={value}" for key, value in values.items()]


@pytest.fixture(scope="module")
def lake_root(tmp_path_factory: pytest.TempPathFactory, make_settings) -> Path:
    if not (IKEA_DIR / "images").is_dir() or not WEIGHTS.is_file():
        pytest.skip(f"IKEA data or SqueezeNet weights not under {SHARED}")
    root = tmp_path_factory.mktemp("style_select")
    settings = make_settings(root)
    ingest_catalog(
        Lakehouse(settings.lake.root),
        settings.catalog,
        settings.lake,
        source_dir=_slice(root / "ikea"),
    )
    return root


def test_selected_featurizer_is_registered_and_beats_random_held_out(lake_root: Path) -> None:
    runner = CliRunner()
    args = _args(lake_root)
    selected = runner.invoke(app, ["style", "select", *args])
    assert selected.exit_code == 0, selected.output
    mlflow.set_tracking_uri(f"sqlite:///{lake_root / 'mlflow.db'}")
    run_id = selected.output.split("run ")[-1].split(":")[0]
    run = mlflow.get_run(run_id)
    winner = run.data.params["style_featurizer"]
    assert winner in {"+".join(c) for c in CANDIDATES}
    assert run.data.tags["simrec.style.bundle"] == "selected"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert {VALIDATION_FILE, HELDOUT_FILE} <= artifacts
    validation = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=VALIDATION_FILE)
        ).read_text()
    )
    assert validation["winner"]["candidate"] == winner
    assert len(validation["candidates"]) == len(CANDIDATES)

    figures = {row["pair"]: row for row in heldout_figures(run_id)}
    chair_table = figures["chair:table"]
    assert chair_table["queries"] == 83  # every eligible chair, each held out once
    assert chair_table["hr_at_10"] >= chair_table["random_hr_at_10"] + MARGIN
    low, high = chair_table["hr_at_10_interval"]
    assert low <= chair_table["hr_at_10"] <= high

    registered = runner.invoke(app, ["style", "register", "--run-id", run_id, *args])
    assert registered.exit_code == 0, registered.output
    model = mlflow.pyfunc.load_model("models:/simrec-style@champion")
    assert model.metadata.run_id == run_id
    photo = next((lake_root / "ikea" / "images" / "chair").iterdir()).read_bytes()
    frame = pd.DataFrame(
        {
            "image": [base64.b64encode(photo).decode()] * 2,
            "k": [3, 2],
            "categories": ["table", "sofa"],
        }
    )
    answer = model.predict(frame)
    assert answer.groupby("query")["category"].apply(list).tolist() == [["table"] * 3, ["sofa"] * 2]
