"""Package → register → serve behind a bearer token → client, on a small real Fashion-MNIST run.

One module-scoped model is trained, indexed and packaged into a temp MLflow store; a real
uvicorn server on 127.0.0.1 serves it from the registry alias.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import uvicorn
from PIL import Image
from typer.testing import CliRunner

import simrec
from simrec.cli import app
from simrec.client import (
    AuthenticationError,
    RequestRejectedError,
    ServerUnavailableError,
    SimrecClient,
)
from simrec.images import InvalidImageError
from simrec.index.faiss_index import IndexMismatchError
from simrec.model.train import train
from simrec.serving.package import package_run, query_frame
from simrec.serving.pyfunc import BundleConfig, decode_query_image
from simrec.serving.server import create_app
from simrec.serving.tokens import TokenError, load_token

SRC = Path(simrec.__file__).resolve().parents[1]
MAX_BODY_BYTES = 1 << 20


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def packaged(fashion_lake, tmp_path_factory, make_settings):
    """A small model trained on the shared lake, indexed and packaged as simrec-fashion."""
    _, lake, table = fashion_lake
    root = tmp_path_factory.mktemp("serving")
    settings = make_settings(
        root,
        **{
            "lake.root": str(lake.root),
            "train.epochs": 1,
            "train.steps_per_epoch": 30,
            "serving.max_body_bytes": MAX_BODY_BYTES,
        },
    )
    trained = train(settings, lake, table)
    # forced: one short epoch need not beat raw pixels; serving, not the gate, is tested here
    result = package_run(settings, lake, trained.run_id, force=True)
    return settings, lake, table, trained, result


@pytest.fixture(scope="module")
def model(packaged):
    return mlflow.pyfunc.load_model(packaged[-1].registry_uri)


@pytest.fixture(scope="module")
def images(packaged) -> dict[str, bytes]:
    """Real query images: catalog (train) rows and test rows, as stored (PNG bytes)."""
    _, lake, table, _, _ = packaged
    rows = lake.read(table.name, table.version, columns=["id", "split", "image"]).to_pylist()
    catalog = sorted((r for r in rows if r["split"] == "train"), key=lambda r: r["id"])[:3]
    tests = sorted((r for r in rows if r["split"] == "test"), key=lambda r: r["id"])[:3]
    return {row["id"]: row["image"] for row in catalog + tests}


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def server(model):
    """`simrec serve`'s app under a real uvicorn on a free loopback port, in a thread."""
    token = secrets.token_urlsafe(24)
    sock = _free_socket()
    config = uvicorn.Config(
        create_app(model, token, MAX_BODY_BYTES), log_level="warning", lifespan="off"
    )
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield url, token
    uvicorn_server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode("ascii")


def reencoded(payload: bytes, size: int, mode: str, image_format: str) -> bytes:
    """The same picture at another size, mode and format (what a shop might upload)."""
    image = Image.open(io.BytesIO(payload)).convert(mode).resize((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def png_bomb(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side×side pixels (400 M at 20000) that compresses to ~50 KB."""
    row = b"\x00" * (1 + side // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def invoke(url: str, token: str | None, body: object, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    headers.setdefault("Content-Type", "application/json")
    headers.update(kwargs.pop("headers", {}))
    return httpx.post(f"{url}/invocations", content=body, headers=headers, timeout=60, **kwargs)


def split(rows: list[list[object]], columns: tuple[str, ...] = ("image", "k")) -> dict:
    return {"dataframe_split": {"columns": list(columns), "data": rows}}


# -- packaging ------------------------------------------------------------------------------
def test_package_has_lineage_signature_example_and_alias(packaged, model) -> None:
    settings, _, table, trained, result = packaged
    lineage = model.metadata.metadata["simrec"]["lineage"]
    assert lineage["source_table"] == table.name
    assert lineage["source_table_version"] == table.version
    assert lineage["training_run_id"] == trained.run_id
    assert lineage["index_size"] == 3000

    inputs = {spec.name: spec for spec in model.metadata.get_input_schema().inputs}
    assert set(inputs) == {"image", "item_id", "k", "categories", "labels", "exclude_ids"}
    assert not any(spec.required for spec in inputs.values())  # the contract checks rows
    params = [p.name for p in model.metadata.get_params_schema().params]
    assert params == ["categories", "labels", "exclude_ids", "thumbnails"]
    assert isinstance(model.input_example, pd.DataFrame) and len(model.input_example) == 2

    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(settings.serving.registered_model, "champion")
    assert int(version.version) == result.version
    assert version.tags["training_run_id"] == trained.run_id
    package_run_tags = mlflow.get_run(result.run_id).data.tags
    assert package_run_tags["simrec.training_run_id"] == trained.run_id


def test_a_loaded_bundle_searches_micro_batches_through_blas(packaged, model) -> None:
    import faiss

    settings = packaged[0]
    dim = model.unwrap_python_model().index.dim
    # faiss decides by queries × dimensions; left alone it waits for ~1000 queries
    expected = settings.serving.search_blas_min_queries * dim
    assert faiss.cvar.distance_compute_blas_threshold == expected


def test_loading_fails_loudly_when_index_and_metadata_disagree(packaged, tmp_path) -> None:
    local = Path(mlflow.artifacts.download_artifacts(packaged[-1].model_uri, dst_path=tmp_path))
    items_file = next(local.rglob("items.parquet"))
    items = pd.read_parquet(items_file)
    items.iloc[1:].to_parquet(items_file, index=False)  # one indexed item loses its metadata
    with pytest.raises(IndexMismatchError, match="holds 2999 items but the index 3000"):
        mlflow.pyfunc.load_model(str(local))


def test_in_process_predict_answers_any_size_and_mode(model, images) -> None:
    catalog_id, payload = next(iter(images.items()))
    queries = query_frame(
        [reencoded(payload, 120, "RGB", "JPEG"), reencoded(payload, 40, "RGBA", "PNG")], [3, 1]
    )
    results = model.predict(queries)
    assert list(results.columns) == [
        "query", "rank", "item_id", "distance", "label", "label_name", "thumbnail",
    ]  # fmt: skip
    assert results.groupby("query").size().tolist() == [3, 1]
    assert results["item_id"].iloc[0] == catalog_id  # a catalog image finds itself first
    assert results["distance"].is_monotonic_increasing or results["query"].nunique() > 1
    thumbnail = Image.open(io.BytesIO(base64.b64decode(results["thumbnail"].iloc[0])))
    assert thumbnail.format == "PNG" and max(thumbnail.size) <= 64
    bare = model.predict(queries, params={"thumbnails": False})
    assert "thumbnail" not in bare.columns and bare["item_id"].equals(results["item_id"])


def test_served_answers_are_the_same_for_an_image_and_its_mirror(model, images) -> None:
    # model.mirror_average: the bundle embeds every query with its left-right mirror, so a
    # mirrored photo gets the very same answers (a plain CNN embedding is not mirror-invariant).
    def png(image: Image.Image) -> bytes:
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()

    photos = [Image.open(io.BytesIO(payload)) for payload in images.values()]
    plain = model.predict(query_frame([png(p) for p in photos], [5] * len(photos)))
    mirrored = model.predict(
        query_frame([png(p.transpose(Image.FLIP_LEFT_RIGHT)) for p in photos], [5] * len(photos))
    )
    assert plain["item_id"].tolist() == mirrored["item_id"].tolist()
    assert np.allclose(plain["distance"], mirrored["distance"], atol=1e-4)


@pytest.mark.parametrize(
    ("mode", "image_format"),
    [("RGBA", "PNG"), ("P", "PNG"), ("LA", "PNG"), ("I;16", "PNG"), ("1", "PNG"),
     ("CMYK", "JPEG"), ("L", "JPEG"), ("F", "TIFF"), ("RGB", "WEBP"), ("RGB", "BMP")],
)  # fmt: skip
def test_query_images_of_any_mode_become_model_input(mode: str, image_format: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert("L" if mode in ("I;16", "F") else "RGB").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    text = "data:image/x;base64," + b64(buffer.getvalue())
    for size, channels in ((28, 1), (64, 3)):  # Fashion-MNIST, an RGB catalog
        config = BundleConfig(
            image_size=size, channels=channels, default_k=5, max_k=100, max_batch_size=4,
            max_image_pixels=10_000, image_formats=("PNG", "JPEG", "TIFF", "WEBP", "BMP"),
        )  # fmt: skip
        converted = decode_query_image(text, 0, config)
        assert converted.shape == (size, size, channels) and converted.dtype == np.uint8
    with pytest.raises(InvalidImageError, match="exceeds the limit"):
        decode_query_image(text, 0, config.model_copy(update={"max_image_pixels": 1000}))


# -- the server: auth -----------------------------------------------------------------------
def test_auth_matrix(server, images) -> None:
    url, token = server
    body = split([[b64(next(iter(images.values()))), 2]])
    for bad in (None, "wrong-" + token, token[:-1]):
        refused = invoke(url, bad, body)
        assert refused.status_code == 401, bad
        assert refused.json()["error_code"] == "UNAUTHENTICATED"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert token not in refused.text
    basic = invoke(url, None, body, headers={"Authorization": f"Basic {token}"})
    assert basic.status_code == 401
    assert invoke(url, token, body).status_code == 200
    for open_path in ("/ping", "/health", "/version"):
        assert httpx.get(f"{url}{open_path}").status_code == 200, open_path
    for other in ("/docs", "/openapi.json", "/invocations/", "/nowhere"):
        assert httpx.get(f"{url}{other}").status_code == 401, other


# -- the server: bad input ------------------------------------------------------------------
BAD_REQUESTS = [
    "not base64", "not an image", "truncated image", "decompression bomb", "image not a string",
    "image null", "empty frame", "empty records", "missing column", "extra column", "k a string",
    "k a fraction", "k a boolean", "k missing in one row", "k zero", "k negative", "k huge",
    "k beyond int64", "too many queries", "malformed JSON", "not UTF-8", "JSON list",
    "no input format", "two input formats", "params not an object", "thumbnails not a boolean",
]  # fmt: skip


@pytest.fixture(scope="module")
def bad_requests(images: dict[str, bytes]) -> dict[str, tuple[object, int, str]]:
    """Request body, expected status and a fragment of the expected message, by case."""
    good = b64(next(iter(images.values())))
    stored = next(iter(images.values()))
    return {
        "not base64": (split([["this is not base64!", 3]]), 400, "not valid base64"),
        "not an image": (split([[b64(b"plain text, no pixels"), 3]]), 400, "not a readable"),
        "truncated image": (split([[b64(stored[: len(stored) // 2]), 3]]), 400, "truncated"),
        "decompression bomb": (split([[b64(png_bomb()), 3]]), 400, "pixels"),
        "image not a string": (split([[12345, 3]]), 400, "expected a base64 string"),
        "image null": (split([[None, 3]]), 400, "exactly one of 'image' or 'item_id'"),
        "empty frame": (split([]), 400, "no queries"),
        "empty records": ({"dataframe_records": []}, 400, "image"),
        "missing column": (split([[3]], ("k",)), 400, "expected a column 'image'"),
        "extra column": (split([[good, 3, "x"]], ("image", "k", "colour")), 400, "unknown column"),
        "k a string": (split([[good, "five"]]), 400, "must hold integers"),
        "k a fraction": (split([[good, 2.5]]), 400, "must hold integers"),
        "k a boolean": (split([[good, True]]), 400, "must hold integers"),
        "k missing in one row": (
            {"dataframe_records": [{"image": good, "k": 2}, {"image": good}]},
            400,
            "must hold integers",
        ),
        "k zero": (split([[good, 0]]), 400, "from 1 to 100"),
        "k negative": (split([[good, -4]]), 400, "from 1 to 100"),
        "k huge": (split([[good, 1_000_000]]), 400, "from 1 to 100"),
        "k beyond int64": (split([[good, 10**30]]), 400, "out of range"),
        "too many queries": (split([[good, 1]] * 65), 400, "limit is 64"),
        "malformed JSON": (b'{"dataframe_split": {"columns": ["image"], ', 400, "not valid JSON"),
        "not UTF-8": (b"\xff\xfe{}", 400, "not valid JSON"),
        "JSON list": (b"[1, 2]", 400, "JSON object"),
        "no input format": ({"data": [[good]]}, 400, "exactly one of"),
        "two input formats": (
            {**split([[good, 1]]), "inputs": {"image": [good]}},
            400,
            "exactly one of",
        ),
        "params not an object": ({**split([[good, 1]]), "params": [1]}, 400, "'params'"),
        "thumbnails not a boolean": (
            {**split([[good, 1]]), "params": {"thumbnails": "yes"}},
            400,
            "thumbnails",
        ),
    }


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_input_gets_a_4xx_json_message(server, bad_requests, case: str) -> None:
    url, token = server
    assert list(bad_requests) == BAD_REQUESTS
    body, status, fragment = bad_requests[case]
    response = invoke(url, token, body)
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {"error_code", "message"}  # no server-side stack trace
    assert fragment in error["message"], error["message"]


def test_transport_level_bad_input(server) -> None:
    url, token = server
    declared = invoke(url, token, b"x" * (MAX_BODY_BYTES + 1))
    assert declared.status_code == 413 and "exceeds" in declared.json()["message"]

    def chunks():  # no Content-Length: the limit is counted while reading
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"x" * 65536

    streamed = httpx.post(
        f"{url}/invocations",
        content=chunks(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert streamed.status_code == 413
    no_type = invoke(url, token, b"{}", headers={"Content-Type": ""})
    assert no_type.status_code == 415 and no_type.json()["error_code"]
    for other in ("text/plain", "text/csv"):
        refused = invoke(url, token, b"image,k\nabc,3\n", headers={"Content-Type": other})
        assert refused.status_code == 415 and "application/json" in refused.json()["message"]


def test_over_limit_bodies_always_get_a_readable_413(server) -> None:
    """Every time, not most times: a server that answers before reading the rest of an
    over-limit body closes on unread bytes, the kernel resets the connection and the client
    sees `Connection reset by peer` instead of the 413 (intermittently, by timing)."""
    url, token = server
    body = b"x" * (4 * MAX_BODY_BYTES)
    for attempt in range(12):
        declared = invoke(url, token, body)
        assert declared.status_code == 413, attempt
        assert declared.json()["error_code"]
        streamed = httpx.post(
            f"{url}/invocations",
            content=(body[i : i + 65536] for i in range(0, len(body), 65536)),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert streamed.status_code == 413, attempt


def test_server_is_still_up_after_bad_input(server, images) -> None:
    url, token = server
    assert httpx.get(f"{url}/ping").status_code == 200
    assert invoke(url, token, split([[b64(next(iter(images.values()))), 1]])).status_code == 200


# -- the server: answers --------------------------------------------------------------------
def test_batch_over_http_equals_in_process_predict(server, model, images) -> None:
    url, token = server
    payloads = list(images.values())
    frame = query_frame(payloads, [5, 2, 7, 1, 3, 4])
    expected = model.predict(frame)
    for body in (
        {"dataframe_split": frame.to_dict(orient="split", index=False)},
        {"dataframe_records": frame.to_dict(orient="records")},
        {"inputs": frame.to_dict(orient="list")},
    ):
        response = invoke(url, token, body)
        assert response.status_code == 200, response.text
        served = pd.DataFrame(response.json()["predictions"])
        assert served["item_id"].tolist() == expected["item_id"].tolist()
        assert served["query"].tolist() == expected["query"].tolist()
        np.testing.assert_allclose(served["distance"], expected["distance"], atol=1e-6)
        # every column (metadata, thumbnails), as in-process predict gives it
        assert served.columns.tolist() == expected.columns.tolist()
        others = [c for c in expected.columns if c != "distance"]
        assert served[others].astype(str).equals(expected[others].astype(str))
    default_k = invoke(
        url, token, {"dataframe_split": {"columns": ["image"], "data": [[b64(payloads[0])]]}}
    )
    assert len(default_k.json()["predictions"]) == 5  # recommend.k


def test_rest_answers_are_the_ids_the_evaluation_scored(packaged, server) -> None:
    """What was evaluated is what is served: the package step's evaluation of the bundle
    ranked the same items, for the same test queries, as the server answers over HTTP."""
    result = packaged[-1]
    score = result.evaluation.score
    assert result.evaluation.queries == len(score.queries) == 3000
    picks = np.linspace(0, len(score.queries) - 1, 40).astype(int)  # over the whole set
    k = score.found_ids.shape[1]
    frame = query_frame([score.queries.images[i] for i in picks], [k] * len(picks))
    url, token = server
    response = invoke(
        url,
        token,
        {
            "dataframe_split": frame.to_dict(orient="split", index=False),
            "params": {"thumbnails": False},
        },
    )
    assert response.status_code == 200, response.text
    served = pd.DataFrame(response.json()["predictions"])
    for position, query in enumerate(picks):
        answer = served[served["query"] == position].sort_values("rank")["item_id"].tolist()
        assert answer == score.found_ids[query].tolist(), score.queries.ids[query]
    # The figures come from those answers: Recall@1 of the picked queries, recomputed here.
    labels = served[served["rank"] == 1].sort_values("query")["label"].to_numpy()
    hits = labels == score.queries.labels[picks]
    assert hits.mean() == pytest.approx(
        (score.found_labels[picks, 0] == score.queries.labels[picks]).mean()
    )


# -- the client -----------------------------------------------------------------------------
def test_client_returns_typed_results(server, images, tmp_path) -> None:
    url, token = server
    catalog_id, payload = next(iter(images.items()))
    path = tmp_path / "query.jpg"
    path.write_bytes(reencoded(payload, 64, "RGB", "JPEG"))
    with SimrecClient(url, token) as client:
        assert client.healthy()
        from_bytes = client.similar(payload, k=4)
        from_path = client.similar(path, k=4)
        from_image = client.similar(Image.open(io.BytesIO(payload)), k=4, thumbnails=False)
        batch = client.similar_batch(list(images.values())[:3], k=2)
    for results in (from_bytes, from_path, from_image):
        assert [item.rank for item in results] == [1, 2, 3, 4]
        assert results[0].item_id == catalog_id
    top = from_bytes[0]
    assert isinstance(top.distance, float) and top.label == top.metadata["label_name"]
    assert isinstance(top.metadata["label"], int)
    assert isinstance(top.thumbnail, Image.Image) and top.thumbnail.size == (28, 28)
    assert from_image[0].thumbnail is None
    assert [len(results) for results in batch] == [2, 2, 2]


def test_client_raises_clear_errors(server, images) -> None:
    url, token = server
    with SimrecClient(url, "not-the-token") as client, pytest.raises(AuthenticationError):
        client.similar(next(iter(images.values())))
    with SimrecClient(url, token) as client:
        with pytest.raises(RequestRejectedError, match="not a readable image") as rejected:
            client.similar(b"these bytes are no image")
        assert rejected.value.status == 400
        with pytest.raises(RequestRejectedError, match="from 1 to 100"):
            client.similar(next(iter(images.values())), k=0)
    closed = _free_socket()  # bound but never listening: nothing answers there
    port = closed.getsockname()[1]
    try:
        with SimrecClient(f"http://127.0.0.1:{port}", token, timeout=5) as client:
            assert not client.healthy()
            with pytest.raises(ServerUnavailableError, match="cannot reach"):
                client.similar(next(iter(images.values())))
    finally:
        closed.close()


def test_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-of-some-length\n")
    token_file.chmod(0o600)
    assert load_token(token_file, "SIMREC_TEST_TOKEN", 16) == "s3cret-token-of-some-length"
    monkeypatch.setenv("SIMREC_TEST_TOKEN", "from-the-environment-1234")
    assert load_token(None, "SIMREC_TEST_TOKEN", 16) == "from-the-environment-1234"
    with pytest.raises(TokenError, match="shorter than 64"):
        load_token(None, "SIMREC_TEST_TOKEN", 64)
    monkeypatch.delenv("SIMREC_TEST_TOKEN")
    with pytest.raises(TokenError, match="SIMREC_TEST_TOKEN"):
        load_token(None, "SIMREC_TEST_TOKEN", 16)
    with pytest.raises(TokenError, match="cannot read"):
        load_token(tmp_path / "missing", "SIMREC_TEST_TOKEN", 16)


def test_serve_refuses_to_start_without_a_proper_token(settings) -> None:
    store = [f"--set=mlflow.tracking_uri={settings.mlflow.tracking_uri}"]
    outcome = CliRunner().invoke(app, ["serve", *store], env={"SIMREC_API_TOKEN": "short"})
    assert outcome.exit_code == 1 and "shorter than 16 characters" in outcome.output
    outcome = CliRunner().invoke(app, ["serve", *store], env={"SIMREC_API_TOKEN": ""})
    assert outcome.exit_code == 1 and "no API token" in outcome.output


# -- the commands, as separate processes ----------------------------------------------------
def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not come up in {timeout} s")


def _env(settings) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["MLFLOW_TRACKING_URI"] = settings.mlflow.tracking_uri
    return env


@pytest.mark.slow
def test_simrec_package_serve_and_query_commands(packaged, images, tmp_path) -> None:
    settings, _, _, trained, _ = packaged
    common = [
        f"--set=mlflow.tracking_uri={settings.mlflow.tracking_uri}",
        f"--set=lake.root={settings.lake.root}",
    ]
    packaged_by_cli = CliRunner().invoke(
        app,
        ["package", "--run-id", trained.run_id, "--register", "simrec-cli", "--alias", "staging",
         "--force", *common],
    )  # fmt: skip
    assert packaged_by_cli.exit_code == 0, packaged_by_cli.output
    assert "models:/simrec-cli@staging" in packaged_by_cli.output
    token_file = tmp_path / "token"
    token_file.write_text(secrets.token_urlsafe(24))
    token_file.chmod(0o600)
    port = _free_socket().getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "simrec.cli", "serve", "--model-uri", "models:/simrec-cli@staging",
         "--port", str(port), "--token-file", str(token_file), *common],
        env=_env(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        _wait_ready(url, process)
        query = tmp_path / "query.png"
        catalog_id, payload = next(iter(images.items()))
        query.write_bytes(payload)
        done = subprocess.run(
            [sys.executable, "-m", "simrec.cli", "query", str(query), "--url", url,
             "--token-file", str(token_file), "-k", "3", *common],
            env=_env(settings), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        assert len(lines) == 4 and lines[1].split()[1] == catalog_id
        by_item = subprocess.run(
            [sys.executable, "-m", "simrec.cli", "query", "--item-id", catalog_id, "--url", url,
             "--token-file", str(token_file), "-k", "3", *common],
            env=_env(settings), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert by_item.returncode == 0, by_item.stderr
        item_ids = [line.split()[1] for line in by_item.stdout.strip().splitlines()[1:]]
        # the item's own photo found the item first; by id, the item itself never comes back
        assert len(item_ids) == 3 and catalog_id not in item_ids
        assert item_ids[:2] == [line.split()[1] for line in lines[2:]]
        neither = CliRunner().invoke(app, ["query", "--url", url, *common])
        assert neither.exit_code != 0 and "--item-id" in neither.output
        refused = subprocess.run(
            [sys.executable, "-m", "simrec.cli", "query", str(query), "--url", url, *common],
            env={**_env(settings), "SIMREC_API_TOKEN": "wrong-token"},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert refused.returncode == 1 and "refused the token" in refused.stderr
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert token_file.read_text() not in output


@pytest.mark.slow
def test_plain_mlflow_models_serve_works_unchanged(packaged, model, images) -> None:
    settings = packaged[0]
    mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    assert mlflow_cli
    port = _free_socket().getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [mlflow_cli, "models", "serve", "-m", packaged[-1].registry_uri, "--env-manager",
         "local", "--host", "127.0.0.1", "--port", str(port)],
        env=_env(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        _wait_ready(url, process)
        frame = query_frame(list(images.values())[:2], [3, 3])
        response = httpx.post(
            f"{url}/invocations",
            json={"dataframe_split": frame.to_dict(orient="split", index=False)},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        served = pd.DataFrame(response.json()["predictions"])
        assert served["item_id"].tolist() == model.predict(frame)["item_id"].tolist()
    finally:
        process.terminate()
        process.communicate(timeout=30)
