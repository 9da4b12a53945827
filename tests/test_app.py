"""The Streamlit demo app: both pages through AppTest on small real registered models, and one
end-to-end run of `simrec app` in headless Debian chromium (Playwright)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from streamlit.testing.v1 import AppTest

from simrec.app import browser
from simrec.lake.catalog import ingest_catalog
from simrec.lake.fashion_mnist import ingest_fashion_mnist
from simrec.lake.tables import Lakehouse
from simrec.model.train import train
from simrec.serving.package import package_run
from simrec.style.build import build_style
from simrec.style.pyfunc import log_style_pyfunc
from simrec.style.runs import bundle_folder
from simrec.tracking import setup_mlflow

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "src" / "simrec" / "app" / "main.py"
IKEA_DIR = REPO.parent / "shared" / "data" / "ikea"
STYLE_SLICE = {
    "style.categories": ["chair", "table", "sofa"],
    "style.featurizer": "gram",  # the app is the subject here, not the selection
    "style.backbone": "vgg16",
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
            settings,
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


def _result_captions(app: AppTest) -> list[str]:
    return [c for c in _captions(app) if c.startswith("#")]


def test_answer_says_which_model_answered_and_how_fast(app_env) -> None:
    app = _pick_first(_app(), "fashion")
    answered = [c for c in _captions(app) if c.startswith("Answered by")]
    assert len(answered) == 1, _captions(app)
    # name, version, alias and the Delta table version the model was trained on, then time
    assert re.fullmatch(
        r"Answered by simrec-fashion v1 \(@champion\), trained on fashion_mnist v\d+ "
        r"in \d+ ms",
        answered[0],
    ), answered[0]


def test_more_like_this_requeries_by_the_catalog_item(app_env) -> None:
    app = _pick_first(_app(), "fashion")
    more = next(b for b in app.button if b.key.startswith("fashion_more_"))
    item_id = more.key.rsplit("_", 1)[1]
    more.click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    query = app.session_state["fashion_query"]
    assert query["item_id"] == item_id  # asked by id, not by a re-uploaded file
    assert any(c.startswith("More like: ") and item_id in c for c in _captions(app))
    results = _result_captions(app)
    ranks = sorted(int(c.split()[0][1:]) for c in results)  # the grid lists column by column
    assert ranks == [1, 2, 3, 4, 5]
    keys = [b.key for b in app.button if b.key.startswith("fashion_more_")]
    assert all(not key.endswith(f"_{item_id}") for key in keys)  # the item is not its own match


def test_more_like_this_on_furniture_keeps_the_categories(app_env) -> None:
    app = _app("Furniture")
    app.multiselect(key="furniture_targets").set_value(["table", "sofa"]).run()
    app.slider[0].set_value(2).run()
    _pick_first(app, "furniture")
    more = next(b for b in app.button if b.key.startswith("furniture_more_table_"))
    item_id = more.key.rsplit("_", 1)[1]
    more.click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert [s.value for s in app.subheader] == ["table", "sofa"]
    keys = [b.key for b in app.button if b.key.startswith("furniture_more_")]
    assert len(keys) == 4 and all(not key.endswith(f"_{item_id}") for key in keys)


def _encoded(image, fmt: str) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _awkward_uploads() -> dict[str, bytes]:
    import numpy as np
    from PIL import Image

    jpeg = _encoded(Image.new("RGB", (64, 64), "olive"), "JPEG")
    return {
        "deep.png": _encoded(
            Image.fromarray(np.arange(0, 65_536, 64, dtype=np.uint16).reshape(32, 32)), "PNG"
        ),
        "print.jpg": _encoded(Image.new("CMYK", (48, 48), (10, 200, 30, 0)), "JPEG"),
        "scan.tif": _encoded(
            Image.fromarray(np.linspace(0, 1, 1024, dtype=np.float32).reshape(32, 32)), "TIFF"
        ),
        "cut.jpg": jpeg[: len(jpeg) // 2],
    }


@pytest.mark.parametrize("name", ["deep.png", "print.jpg", "scan.tif", "cut.jpg"])
def test_awkward_upload_is_results_or_a_message_never_a_traceback(app_env, name) -> None:
    app = _app()
    # AppTest cannot drive st.file_uploader: put what an upload stores into session state.
    app.session_state["fashion_query"] = {"image": _awkward_uploads()[name], "source": name}
    app.run()
    assert not app.exception, app.exception
    errors = [e.value for e in app.error]
    if name == "cut.jpg":
        assert errors and f"{name}: corrupt or truncated image" in errors[0]
    elif name == "scan.tif":  # TIFF is not in the served model's allow-list: said, not crashed
        assert errors and "not one of the accepted formats" in errors[0]
    else:  # the model can use it: the query is shown and answered
        assert not errors, errors
        assert len(_result_captions(app)) == 5


def test_models_are_loaded_once_per_process(app_env, monkeypatch) -> None:
    import streamlit as st

    loads = []
    real_load = mlflow.pyfunc.load_model

    def counting_load(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    st.cache_resource.clear()
    monkeypatch.setattr(mlflow.pyfunc, "load_model", counting_load)
    app = _pick_first(_app(), "fashion")
    app.slider[0].set_value(3).run()
    _pick_first(app, "fashion")
    _pick_first(_app(), "fashion")  # a second browser session in the same process
    assert not app.error, [e.value for e in app.error]
    assert len(loads) == 1


def test_upload_limit_and_error_details_reach_streamlit() -> None:
    """`simrec app`'s command line, read by Streamlit's own config loader: the upload limit
    follows app.max_upload_bytes (rounded up to whole MiB) and browsers get no tracebacks."""
    from streamlit import config as streamlit_config
    from streamlit.web import bootstrap, cli

    from simrec.app.launch import streamlit_command
    from simrec.config import load_settings

    assert load_settings().app.show_error_details == "none"
    app = load_settings(overrides=["app.max_upload_bytes=3145729"]).app  # 3 MiB + 1 byte
    command = streamlit_command("127.0.0.1", 8501, None, [], app)
    # what `streamlit run` does with its arguments, short of starting the server
    parsed = cli.main_run.make_context("run", command[command.index("run") + 1 :])
    try:
        bootstrap.load_config_options(flag_options=parsed.params)
        assert streamlit_config.get_option("server.maxUploadSize") == 4
        assert streamlit_config.get_option("client.showErrorDetails") == "none"
    finally:
        streamlit_config.get_config_options(force_reparse=True)


def _serve(model, token: str, port: int):
    import threading

    import uvicorn

    from simrec.serving.server import create_app

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(model, token, 1 << 20),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    return server, thread


def _stop(server, thread) -> None:
    server.should_exit = True
    thread.join(timeout=10)


def test_app_survives_a_model_server_restart(app_env) -> None:
    """A real `simrec serve` app that stops and comes back on the same port: a message while
    it is down, results again once it is back, in the same browser session."""
    from simrec.config import load_settings

    settings = load_settings()
    setup_mlflow(settings.mlflow)
    model = mlflow.pyfunc.load_model(settings.app.fashion_model_uri)
    token, port = "restart-token-0123456789", _free_port()
    app_env.setenv("SIMREC_API_URL", f"http://127.0.0.1:{port}")
    app_env.setenv("SIMREC_API_TOKEN", token)
    running = _serve(model, token, port)
    try:
        app = _pick_first(_app(), "fashion")
        assert not app.error and len(_result_captions(app)) == 5
        _stop(*running)
        app.slider[0].set_value(4).run()
        assert not app.exception
        assert "not reachable" in app.error[0].value
        running = _serve(model, token, port)
        app.slider[0].set_value(3).run()
        assert not app.error, [e.value for e in app.error]
        assert len(_result_captions(app)) == 3
    finally:
        _stop(*running)


# -- a real browser ---------------------------------------------------------------------------
ARTIFACTS = Path(os.environ.get("SIMREC_TEST_ARTIFACTS", REPO / "test-artifacts")) / "app-browser"
STEP_MS = 120_000  # one interaction: the first answer loads TensorFlow in the app process


def _upload_files(folder: Path) -> dict[str, Path]:
    """A PNG (a Fashion-MNIST-like 28×28), a JPEG (a real IKEA photo) and a non-image."""
    from PIL import Image

    png = folder / "sketch.png"
    pixels = [(x * 9 + y * 3) % 256 for y in range(28) for x in range(28)]
    image = Image.new("L", (28, 28))
    image.putdata(pixels)
    image.save(png)
    jpeg = folder / "armchair.jpg"
    shutil.copy(next((IKEA_DIR / "images" / "chair").glob("*.jpg")), jpeg)
    text = folder / "notes.png"  # named like an image, so the chooser offers it
    text.write_text("shopping list: a lamp, two chairs")
    return {"png": png, "jpeg": jpeg, "text": text}


def _assert_all_loaded(page, watch: browser.ResponseWatch, minimum: int, step: str) -> None:
    broken = browser.wait_for_images(page, minimum, STEP_MS)
    page.screenshot(path=ARTIFACTS / f"{step}.png", full_page=True)
    assert not broken, f"{step}: images not loaded: {broken}"
    assert not watch.failed, f"{step}: error responses: {watch.failed}"


@pytest.mark.slow
def test_every_picture_loads_in_headless_chromium(store, tmp_path) -> None:
    """Both pages, a pick, "more like this", and uploads through the file chooser, in Debian
    chromium: fails if any visible image did not load or any response was 4xx/5xx. Never
    skips: without chromium or Playwright it fails with the reason."""
    browser_tour(store, tmp_path)


def browser_tour(store: Path, tmp_path: Path) -> None:
    from simrec.config import DEFAULT_CONFIG, load_settings

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"browser screenshots: {ARTIFACTS}")
    settings = load_settings(f"{DEFAULT_CONFIG}{os.pathsep}{store}")
    k, grid = settings.recommend.k, settings.app.sample_grid
    files = _upload_files(tmp_path)
    env = {
        **{name: v for name, v in os.environ.items() if not name.startswith("SIMREC_API")},
        "SIMREC_CONFIG": f"{DEFAULT_CONFIG}{os.pathsep}{store}",
    }
    try:
        with (
            browser.running_app(env, tmp_path / "app.log", timeout_s=90) as url,
            browser.chromium_page((1400, 3000)) as page,
        ):
            watch = browser.ResponseWatch().attach(page)
            page.goto(url)
            chooser = page.locator("[data-testid='stFileUploaderDropzoneInput']").first
            chooser.wait_for(state="attached", timeout=STEP_MS)
            offered = chooser.get_attribute("accept") or ""
            # Only image types (and Streamlit's own marker type) are offered to choose from.
            offered_types = {kind.strip() for kind in offered.split(",")} - {
                "application/streamlit"
            }
            assert offered_types == {f".{kind}" for kind in settings.app.upload_types}, offered

            # Fashion: a sample → the query and k results, each with its picture.
            browser.pick_first_sample(page, f"{k} most similar items", STEP_MS)
            page.get_by_text("Answered by simrec-fashion v1 (@champion)").first.wait_for()
            _assert_all_loaded(page, watch, grid + 1 + k, "fashion-pick")
            assert page.get_by_text("#1 ").first.is_visible()

            # "More like this" on the first result: a new answer for that catalog item.
            page.get_by_role("button", name="More like this").first.click()
            page.get_by_text("More like: ").first.wait_for(timeout=STEP_MS)
            _assert_all_loaded(page, watch, grid + 1 + k, "fashion-more-like-this")

            # Uploads through the file chooser: PNG and JPEG answer, a non-image is a message.
            for kind in ("png", "jpeg"):
                browser.upload_file(page, files[kind], STEP_MS)
                page.get_by_text(f"Query: {files[kind].name}").first.wait_for(timeout=STEP_MS)
                page.get_by_text(f"{k} most similar items", exact=True).wait_for(timeout=STEP_MS)
                _assert_all_loaded(page, watch, grid + 1 + k, f"fashion-upload-{kind}")
            browser.upload_file(page, files["text"], STEP_MS)
            message = page.get_by_text("notes.png: not a readable image").first
            message.wait_for(timeout=STEP_MS)
            assert page.get_by_text("Traceback").count() == 0
            _assert_all_loaded(page, watch, grid, "fashion-upload-not-an-image")

            # Furniture: two target categories, a picked item → pictures per category.
            browser.open_page(page, "Furniture", STEP_MS)
            browser.choose_categories(page, ["table", "sofa"], STEP_MS)
            browser.pick_first_sample(page, "table", STEP_MS)
            page.get_by_role("heading", name="sofa").wait_for(timeout=STEP_MS)
            n = min(settings.style.n, 5)
            _assert_all_loaded(page, watch, grid + 1 + 2 * n, "furniture-pick")
            assert browser.result_count(page) == 2 * n
    except browser.BrowserMissingError as error:
        pytest.fail(f"the browser test cannot run: {error}")
