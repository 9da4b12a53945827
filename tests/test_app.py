"""The Streamlit demo app: both pages through AppTest on small real registered models, and one
end-to-end run of `simrec app` in headless Debian chromium (Playwright)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import pytest
import yaml
from streamlit.testing.v1 import AppTest

from simrec.lake.catalog import ingest_catalog
from simrec.lake.fashion_mnist import ingest_fashion_mnist
from simrec.lake.tables import Lakehouse
from simrec.model.train import train
from simrec.serving.package import package_run
from simrec.style.build import build_style
from simrec.style.pyfunc import log_style_pyfunc
from simrec.style.runs import bundle_folder
from simrec.tracking import setup_mlflow

MAIN = Path(__file__).resolve().parents[1] / "src" / "simrec" / "app" / "main.py"
IKEA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ikea"
CHROMIUM = Path("/usr/bin/chromium")
STYLE_SLICE = {
    "style.categories": ["chair", "table", "sofa"],
    "style.weights": "random",
    "style.image_size": 48,
    "style.layers": ["block1_conv2", "block2_conv2"],
    "style.layer_weights": [1.0, 1.0],
    "style.pca_dims": 8,
}
SETTINGS = {
    "train.epochs": 1,
    "train.steps_per_epoch": 20,
    "app.sample_grid": 4,
    "app.grid_columns": 4,
    **STYLE_SLICE,
}


@pytest.fixture(scope="module")
def store(tmp_path_factory, make_settings):
    """A lake (Fashion-MNIST slice + three IKEA categories) and both models registered in a
    tmp MLflow store; returns the config overlay file that points the app at them."""
    if not (IKEA_DIR / "images").is_dir():
        pytest.skip(f"IKEA dataset not found at {IKEA_DIR}")
    root = tmp_path_factory.mktemp("app")
    settings = make_settings(root, **SETTINGS)
    lake = Lakehouse(settings.lake.root)
    fashion = ingest_fashion_mnist(
        lake, settings.fashion_mnist, settings.lake.fashion_table, max_rows_per_split=600
    )
    trained = train(settings, lake, lake.pin(fashion.name, fashion.version))
    package_run(settings, lake, trained.run_id, force=True)  # the app, not the gate, is tested

    source = root / "ikea"
    shutil.copytree(IKEA_DIR / "text_data", source / "text_data")
    for folder in ("chair", "dining table", "couch"):
        shutil.copytree(IKEA_DIR / "images" / folder, source / "images" / folder)
    ingest_catalog(lake, settings.catalog, settings.lake, source_dir=source)
    built = build_style(settings, lake)
    setup_mlflow(settings.mlflow)
    with mlflow.start_run(run_id=built.run_id):
        log_style_pyfunc(
            bundle_folder(built.run_id),
            settings.promotion.style_registered_model,
            settings.style.n,
            settings.style.max_n,
            alias=settings.serving.alias,
        )

    overlay = root / "app.yaml"
    overlay.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return overlay


@pytest.fixture
def app_env(store, monkeypatch):
    from simrec.config import DEFAULT_CONFIG

    monkeypatch.setenv("SIMREC_CONFIG", f"{DEFAULT_CONFIG}{os.pathsep}{store}")
    for name in ("SIMREC_API_URL", "SIMREC_STYLE_API_URL", "SIMREC_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _app(page: str = "Fashion") -> AppTest:
    app = AppTest.from_file(str(MAIN), default_timeout=120)
    app.run()
    if page != "Fashion":
        app.sidebar.radio(key="page").set_value(page).run()
    assert not app.exception, app.exception
    return app


def _pick_first(app: AppTest, page: str) -> AppTest:
    pick = next(b for b in app.button if b.key.startswith(f"{page}_pick_"))
    pick.click().run()
    assert not app.exception, app.exception
    return app


def _captions(app: AppTest) -> list[str]:
    return [caption.value for caption in app.caption]


def test_fashion_pick_shows_k_results_with_label_and_distance(app_env) -> None:
    app = _app()
    app.slider[0].set_value(3).run()
    _pick_first(app, "fashion")
    assert not app.error, [e.value for e in app.error]
    assert [s.value for s in app.subheader] == ["3 most similar items"]
    results = [c for c in _captions(app) if c.startswith("#")]
    assert len(results) == 3
    assert results[0].startswith("#1 ") and "distance" in results[0]


def test_fashion_bad_upload_is_a_readable_error(app_env) -> None:
    app = _app()
    # AppTest cannot drive st.file_uploader: put what an upload stores into session state.
    app.session_state["fashion_query"] = {"image": b"plain text, no image", "source": "notes.txt"}
    app.run()
    assert not app.exception
    assert "notes.txt: not a readable image" in app.error[0].value


def test_furniture_pick_shows_results_per_chosen_category(app_env) -> None:
    app = _app("Furniture")
    app.multiselect(key="furniture_targets").set_value(["table", "sofa"]).run()
    app.slider[0].set_value(2).run()
    _pick_first(app, "furniture")
    assert not app.error, [e.value for e in app.error]
    assert [s.value for s in app.subheader] == ["table", "sofa"]
    results = [c for c in _captions(app) if c.startswith("#")]
    assert len(results) == 4 and all("distance" in c for c in results)  # pictures from the lake


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_down_and_missing_token_are_messages(app_env) -> None:
    app_env.setenv("SIMREC_API_URL", f"http://127.0.0.1:{_free_port()}")
    app = _app()
    _pick_first(app, "fashion")
    assert "Check SIMREC_API_TOKEN" not in str([e.value for e in app.error])
    assert "no token" in app.error[0].value

    app_env.setenv("SIMREC_API_TOKEN", "some-token-0123456789")
    app = _app()
    _pick_first(app, "fashion")
    assert not app.exception
    assert "not reachable" in app.error[0].value


def test_wrong_token_is_a_message(app_env, store) -> None:
    """A real `simrec serve` behind a token the app does not have: 401 → a message."""
    import threading

    import uvicorn

    from simrec.config import load_settings
    from simrec.serving.server import create_app

    settings = load_settings()
    setup_mlflow(settings.mlflow)
    model = mlflow.pyfunc.load_model(settings.app.fashion_model_uri)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(model, "the-right-token-0123456789", 1 << 20),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        app_env.setenv("SIMREC_API_URL", f"http://127.0.0.1:{port}")
        app_env.setenv("SIMREC_API_TOKEN", "a-wrong-token-0123456789")
        app = _pick_first(_app(), "fashion")
        assert "refused the API token (HTTP 401)" in app.error[0].value

        app_env.setenv("SIMREC_API_TOKEN", "the-right-token-0123456789")
        app = _pick_first(_app(), "fashion")
        assert not app.error, [e.value for e in app.error]
        assert len([c for c in _captions(app) if c.startswith("#")]) == 5  # REST gives thumbnails
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# -- a real browser ---------------------------------------------------------------------------
@pytest.mark.slow
def test_simrec_app_in_headless_chromium(store, tmp_path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: `scripts/install.sh --browser` installs it (needs apt)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    from simrec.config import DEFAULT_CONFIG

    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SIMREC_API")},
        "SIMREC_CONFIG": f"{DEFAULT_CONFIG}{os.pathsep}{store}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "simrec.cli", "app", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stderr.read().decode()
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "simrec app did not start"
            time.sleep(0.5)
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                ],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.goto(url)
            page.get_by_role("button", name="Pick").first.click(timeout=90_000)
            heading = page.get_by_text("5 most similar items")
            heading.wait_for(timeout=120_000)
            results = page.locator("[data-testid='stImage'] img").filter(visible=True)
            page.wait_for_function(
                "() => document.querySelectorAll(\"[data-testid='stImage'] img\").length >= 10"
            )
            page.screenshot(path=tmp_path / "results.png", full_page=True)
            assert heading.is_visible()
            assert results.count() >= 5  # at least the five results (the grid may scroll)
            assert page.get_by_text("#1 ").first.is_visible()
            browser.close()
        assert (tmp_path / "results.png").stat().st_size > 10_000
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
