"""Hostile input against a REAL `simrec serve` process on 127.0.0.1, for both registered models
(simrec-fashion and simrec-style): a generated corpus of odd JSON, wrong types, encodings, image
bombs in several containers, batch sizes and headers must get a JSON 4xx or a 2xx, never a
5xx, without the server's memory running away; an over-limit body gets a 413 the client can
read; SIGTERM ends the server within `serving.shutdown_seconds` even with work in flight.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import mlflow
import pytest
from PIL import Image

import simrec
from simrec.lake.catalog import ingest_catalog
from simrec.lake.tables import Lakehouse
from simrec.model.train import train
from simrec.serving.hostile import (
    NO_ANSWER,
    ServerProcess,
    hostile_corpus,
    is_json_error,
    png_bomb,
    send,
    send_whole_body,
    start_server,
)
from simrec.serving.package import package_run
from simrec.style.build import build_style
from simrec.style.pyfunc import log_style_pyfunc

pytestmark = pytest.mark.slow

SRC = Path(simrec.__file__).resolve().parents[1]
IKEA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ikea"
MIN_CASES = 200
WORK_STARTED_S = 8
# The corpus holds bombs of 81–400 M pixels; decoding any one of them would add 80–1200 MB.
RSS_GROWTH_BOUND = 150 * 2**20
STYLE_SLICE = {
    "style.categories": ["chair"],
    "style.featurizer": "gram",
    "style.backbone": "vgg16",
    "style.weights": "random",
    "style.image_size": 48,
    "style.layers": ["block1_conv2"],
    "style.layer_weights": [1.0],
    "style.pca_dims": 8,
}


def _png(rgb: tuple[int, int, int], size: tuple[int, int] = (60, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def store(fashion_lake, tmp_path_factory, make_settings):
    """Both models registered in one MLflow store: simrec-fashion and simrec-style."""
    if not (IKEA_DIR / "images").is_dir():
        pytest.skip(f"IKEA dataset not found at {IKEA_DIR}")
    _, lake, table = fashion_lake
    root = tmp_path_factory.mktemp("hostile")
    settings = make_settings(
        root, **{"lake.root": str(lake.root), "train.epochs": 1, "train.steps_per_epoch": 20}
    )
    trained = train(settings, lake, table)
    package_run(settings, lake, trained.run_id, force=True)  # served, not gated, here

    source = root / "ikea"
    shutil.copytree(IKEA_DIR / "text_data", source / "text_data")
    shutil.copytree(IKEA_DIR / "images" / "chair", source / "images" / "chair")
    style_settings = make_settings(root, **{"lake.root": str(root / "ikea_lake"), **STYLE_SLICE})
    ikea_lake = Lakehouse(style_settings.lake.root)
    ingest_catalog(ikea_lake, style_settings.catalog, style_settings.lake, source_dir=source)
    built = build_style(style_settings, ikea_lake)
    with mlflow.start_run(run_id=built.run_id):
        log_style_pyfunc(built.folder, "simrec-style", style_settings, alias="champion")
    token = secrets.token_urlsafe(24)
    token_file = root / "token"
    token_file.write_text(token)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["MLFLOW_TRACKING_URI"] = settings.mlflow.tracking_uri
    args = [f"--set=mlflow.tracking_uri={settings.mlflow.tracking_uri}"]
    return {"token": token, "token_file": str(token_file), "env": env, "args": args}


MODELS = {"fashion": "models:/simrec-fashion@champion", "style": "models:/simrec-style@champion"}


def _serve(store, model: str, *extra: str) -> ServerProcess:
    return start_server(
        MODELS[model], store["token_file"], store["token"], [*store["args"], *extra], store["env"]
    )


def _good_request(server: ServerProcess) -> httpx.Response:
    body = {"dataframe_records": [{"image": base64.b64encode(_png((200, 80, 30))).decode()}]}
    return httpx.post(
        f"{server.url}/invocations",
        json=body,
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=60,
    )


@pytest.mark.parametrize("model", sorted(MODELS))
def test_hostile_corpus_gets_json_4xx_or_2xx_and_bounded_memory(store, model: str) -> None:
    cases = hostile_corpus(_png((30, 60, 90)), model, seed=15)
    assert len(cases) >= MIN_CASES
    assert {case.kind for case in cases} >= {"json shape", "type", "encoding", "image", "batch"}
    server = _serve(store, model)
    try:
        assert _good_request(server).status_code == 200  # warm: first-request allocations
        baseline = server.resident_bytes()
        failures, statuses, worst = [], {}, 0
        with httpx.Client(timeout=120) as client:
            for case in cases:
                (status, body), growth = server.peak_growth(
                    lambda case=case: send(client, server.url, server.token, case)
                )
                worst = max(worst, growth)
                statuses[status] = statuses.get(status, 0) + 1
                if (
                    status == NO_ANSWER
                    or status >= 500
                    or (status >= 400 and not is_json_error(body))
                ):
                    failures.append(f"{case.name}: {status} {body[:200]!r}")
        assert not failures, "\n".join(failures)
        assert 200 in statuses and 400 in statuses, statuses
        assert worst < RSS_GROWTH_BOUND, f"one request grew the server by {worst / 2**20:.0f} MB"
        assert server.resident_bytes() - baseline < 2 * RSS_GROWTH_BOUND
        assert _good_request(server).status_code == 200  # still serving
    finally:
        output = server.stop()
    assert "Traceback" not in output or "unhandled error" not in output, output[-3000:]


def test_over_limit_body_gets_a_readable_413(store) -> None:
    """Sent the way curl does: the whole body is written before the answer is read."""
    server = _serve(store, "fashion", "--set=serving.max_body_bytes=1048576")
    try:
        for size in (64 * 2**20, 3 * 2**20):
            status, answer = send_whole_body(server.url, server.token, b"x" * size)
            assert status == 413
            assert json.loads(answer)["error_code"] == "REQUEST_TOO_LARGE"
        assert _good_request(server).status_code == 200
    finally:
        server.stop()


def test_image_bomb_refused_before_decoding_in_every_container(store) -> None:
    """An ICO embedding a 9000×9000 PNG (Pillow decodes it while *opening*) and a plain PNG
    bomb: refused with a 400 naming the limit, the server's memory barely moves."""
    from simrec.serving.hostile import ico_holding

    ico = ico_holding(_png((0, 0, 0), (9000, 9000)))
    server = _serve(store, "fashion", "--set=serving.image_formats=[PNG,ICO]")
    try:
        assert _good_request(server).status_code == 200
        for payload in (ico, png_bomb(20000, 20000)):
            response, growth = server.peak_growth(
                lambda payload=payload: httpx.post(
                    f"{server.url}/invocations",
                    json={"inputs": {"image": [base64.b64encode(payload).decode()]}},
                    headers={"Authorization": f"Bearer {server.token}"},
                    timeout=60,
                )
            )
            assert response.status_code == 400 and "pixels" in response.json()["message"]
            assert growth < 50 * 2**20, f"the server grew by {growth / 2**20:.0f} MB"
    finally:
        server.stop()


def test_sigterm_exits_within_shutdown_seconds_with_work_in_flight(store) -> None:
    """Requests that take far longer than the deadline are in flight when SIGTERM comes: 4 ×
    64 photos of 20 M pixels each, ~15 s of decoding per request even on idle cores; uvicorn
    alone would cancel the request tasks but then wait for the model's worker threads."""
    shutdown_seconds = 2
    slow = io.BytesIO()
    Image.new("RGB", (5000, 4000), (10, 120, 200)).save(slow, format="JPEG", quality=5)
    body = json.dumps({"inputs": {"image": [base64.b64encode(slow.getvalue()).decode()] * 64}})
    server = _serve(
        store,
        "style",
        f"--set=serving.shutdown_seconds={shutdown_seconds}",
        "--set=serving.max_request_pixels=2000000000",
        "--set=serving.max_body_bytes=67108864",
    )
    answers: list[object] = []

    def call() -> None:
        try:
            answers.append(
                httpx.post(
                    f"{server.url}/invocations",
                    content=body,
                    headers={
                        "Authorization": f"Bearer {server.token}",
                        "Content-Type": "application/json",
                    },
                    timeout=120,
                ).status_code
            )
        except httpx.HTTPError as error:
            answers.append(error)

    callers = [threading.Thread(target=call) for _ in range(4)]
    try:
        started = time.monotonic()
        for caller in callers:
            caller.start()
        time.sleep(WORK_STARTED_S)  # past the guard's checks: the model is decoding images
        assert not answers, f"the slow requests were not slow: {answers}"
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        server.process.wait(timeout=60)
        took = time.monotonic() - signalled
    finally:
        output = server.stop()
        for caller in callers:
            caller.join(timeout=120)
    assert took < shutdown_seconds + 1.5, f"exited {took:.1f} s after SIGTERM\n{output[-2000:]}"
    assert time.monotonic() - started < 60
