"""The decoder's and the guard's limits, fast: formats allow-list, the pixel ceiling before
decoding in every container, strict JSON, the compute budget, and the guard answering any JSON
shape with a JSON 4xx (the real-server fuzz corpus is tests/test_hostile_requests.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from mlflow.types.schema import ColSpec, Schema
from PIL import Image

from simrec.app.backend import api_token
from simrec.config import load_settings
from simrec.images import ImageTooLargeError, InvalidImageError, image_pixels, open_image
from simrec.serving.hostile import ico_holding, png_bomb, send_whole_body
from simrec.serving.limits import LimitError, RequestLimits, check_budget, parse_json
from simrec.serving.server import GuardedApp

SRC = Path(__file__).resolve().parents[1] / "src"
TOKEN = "limits-test-token-0123456789"
SCHEMA = Schema([ColSpec("string", "image"), ColSpec("long", "k", required=False)])


def _encoded(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode()


# -- the decoder ----------------------------------------------------------------------------
def test_only_the_allowed_formats_are_decoded() -> None:
    tiff = _encoded(Image.new("RGB", (8, 8)), "TIFF")
    with pytest.raises(InvalidImageError, match="accepted formats"):
        open_image(tiff, "q", formats=("PNG", "JPEG"))
    assert open_image(tiff, "q", formats=("TIFF",)).size == (8, 8)
    serving = load_settings().serving
    assert "ICO" not in serving.image_formats and "TIFF" not in serving.image_formats


def test_an_ico_holding_a_huge_png_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    """Pillow decodes an ICO's PNG while *opening* it: the ceiling must already be set then.
    Measured in a fresh process that only reads and opens the file, whose peak memory would
    grow by ~240 MB if the 9000×9000 RGB PNG were decoded."""
    ico = tmp_path / "bomb.ico"
    ico.write_bytes(ico_holding(_encoded(Image.new("RGB", (9000, 9000)), "PNG")))
    script = f"""
import sys
sys.path.insert(0, {str(SRC)!r})
from simrec.images import ImageTooLargeError, open_image
payload = open({str(ico)!r}, "rb").read()
def peak_kb():  # VmHWM: this process's own peak (ru_maxrss would include the parent's)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
before = peak_kb()
try:
    open_image(payload, "q", 25_000_000, formats=("ICO", "PNG"))
    print("decoded")
except ImageTooLargeError as error:
    print("refused", error)
print((peak_kb() - before) // 1024)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    outcome, growth_mb = done.stdout.strip().splitlines()
    assert outcome.startswith("refused") and "25000000" in outcome, outcome
    assert int(growth_mb) < 20, f"peak memory grew by {growth_mb} MB"


def test_the_ceiling_holds_for_every_container_and_the_first_frame() -> None:
    big = Image.new("L", (5000, 5000), 255)
    for payload in (
        png_bomb(20000, 20000),
        _encoded(big, "GIF"),
        _encoded(big, "WEBP", lossless=True),
        ico_holding(_encoded(Image.new("L", (6000, 6000)), "PNG")),
    ):
        with pytest.raises(ImageTooLargeError, match="pixels"):
            open_image(payload, "q", 20_000_000, formats=("PNG", "GIF", "WEBP", "ICO"))
    frames = [Image.new("RGB", (32, 32), (i * 50, 0, 0)) for i in range(4)]
    animated = _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert open_image(animated, "q", 2000).size == (32, 32)  # only the first frame
    with pytest.raises(ImageTooLargeError):
        open_image(animated, "q", 1000)


def test_image_pixels_reads_the_header_only() -> None:
    assert image_pixels(png_bomb(20000, 20000), "q", 10**9) == 400_000_000
    with pytest.raises(ImageTooLargeError):
        image_pixels(png_bomb(20000, 20000), "q", 10**6)


# -- strict JSON and the budget -------------------------------------------------------------
@pytest.mark.parametrize(
    "body, fragment",
    [
        (b'{"inputs": {"image": ["a"]}, "inputs": {"image": ["b"]}}', "repeats the JSON name"),
        (b'{"dataframe_records": [{"image": "a", "image": "b"}]}', "repeats the JSON name"),
        (b'{"inputs": {"image": [NaN]}}', "not JSON"),
        (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        ('{"inputs": {}}'.encode("utf-16"), "not UTF-8"),
        (b"", "not valid JSON"),
    ],
)
def test_parse_json_refuses_what_json_loads_would_misread(body: bytes, fragment: str) -> None:
    with pytest.raises(LimitError, match=fragment) as raised:
        parse_json(body)
    assert raised.value.status == 400


def test_the_budget_counts_rows_and_pixels() -> None:
    limits = RequestLimits(
        max_rows=4, max_image_pixels=10_000, max_request_pixels=25_000, image_formats=("PNG",)
    )
    image = _b64(_encoded(Image.new("RGB", (100, 100)), "PNG"))  # 10,000 pixels
    check_budget({"image": [image, image]}, limits)
    with pytest.raises(LimitError, match="limit is 4"):
        check_budget({"image": [image] * 5}, limits)
    with pytest.raises(LimitError, match="25000 pixels in all"):
        check_budget({"image": [image] * 3}, limits)
    with pytest.raises(LimitError, match="limit of 10000 pixels"):
        check_budget({"image": [_b64(png_bomb(20000, 20000))]}, limits)
    check_budget({"image": ["not base64!", 7, None]}, limits)  # left to the model to name


# -- the guard, in process, in front of an app that answers 200 -----------------------------
async def _ok_app(scope, receive, send) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _post(body: bytes, limits: RequestLimits | None = None) -> httpx.Response:
    guard = GuardedApp(_ok_app, TOKEN, 1 << 20, SCHEMA, limits)

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://guard") as client:
            return await client.post(
                "/invocations",
                content=body,
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            )

    return asyncio.run(call())


ODD_SHAPES = {
    "repeated column": {"dataframe_split": {"columns": ["image", "image"], "data": [["a", "b"]]}},
    "nested columns": {"dataframe_split": {"columns": [["image"]], "data": [["a"]]}},
    "columns object": {"dataframe_split": {"columns": {"image": 1}, "data": [["a"]]}},
    "records of lists": {"dataframe_records": [["a", 1]]},
    "records nested": {"dataframe_records": [{"image": {"image": "a"}, "k": [1]}]},
    "inputs nested": {"inputs": {"image": {"nested": ["a"]}}},
    "instances nested": {"instances": [[[["a"]]]]},
    "split not an object": {"dataframe_split": [["a"]]},
}


# Named columns of the right names, values of odd types: the model names the bad value.
PASSED_ON = {"columns object", "inputs nested"}


@pytest.mark.parametrize("case", sorted(ODD_SHAPES))
def test_guard_answers_any_json_shape_with_a_json_4xx(case: str) -> None:
    """Either refused with a JSON 4xx here, or passed on for the model to judge; never a 5xx."""
    response = _post(json.dumps(ODD_SHAPES[case]).encode())
    assert response.status_code < 500, response.text
    if case not in PASSED_ON:
        assert 400 <= response.status_code < 500, response.text
        assert set(response.json()) == {"error_code", "message"}


def test_guard_enforces_the_budget_for_any_model() -> None:
    limits = RequestLimits(
        max_rows=64, max_image_pixels=10**6, max_request_pixels=10**6, image_formats=("PNG",)
    )
    tiny = _b64(_encoded(Image.new("RGB", (8, 8)), "PNG"))
    assert _post(json.dumps({"inputs": {"image": [tiny] * 64}}).encode(), limits).is_success
    many = _post(json.dumps({"inputs": {"image": [tiny] * 2000}}).encode(), limits)
    assert many.status_code == 400 and "limit is 64" in many.json()["message"]


def test_the_app_reads_its_token_from_a_mounted_file(tmp_path: Path, monkeypatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("SIMREC_API_TOKEN", "from-the-environment-0123")
    settings = load_settings().app
    assert api_token(settings) == "from-the-environment-0123"
    assert api_token(settings.model_copy(update={"token_file": token_file})) == TOKEN


# -- the guard behind a real uvicorn on 127.0.0.1 (in a thread) -----------------------------
@pytest.fixture
def live_guard():
    """The guard (1 MiB body limit, 128 MiB drained) under uvicorn with simrec's protocol."""
    import socket
    import threading
    import time

    import uvicorn

    from simrec.serving.protocol import JsonErrorsHttpToolsProtocol

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    guard = GuardedApp(_ok_app, TOKEN, 1 << 20, SCHEMA, None, 128 << 20)
    config = uvicorn.Config(
        guard, log_level="warning", lifespan="off", http=JsonErrorsHttpToolsProtocol
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_an_over_limit_body_gets_a_413_the_client_reads(live_guard: str) -> None:
    """A 64 MB body used to be answered by resetting the connection mid-upload; a client that
    writes the whole body before it reads (curl, requests) must still read the 413."""
    for size in (64 * 2**20, 3 * 2**20):
        status, answer = send_whole_body(live_guard, TOKEN, b"x" * size)
        assert status == 413
        assert json.loads(answer)["error_code"] == "REQUEST_TOO_LARGE"


def test_malformed_http_gets_a_json_400(live_guard: str) -> None:
    import socket

    host, port = live_guard.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nX-Bad: \x7f\x00\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert json.loads(body)["error_code"] == "BAD_REQUEST"
