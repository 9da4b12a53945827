"""Serving for shops, over a real server on 127.0.0.1: queries by catalog item, filters inside
the search, one contract for the fashion and the style model, micro-batching, overload,
readiness, metrics, /version and following the registry alias."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from test_serving import _free_socket, b64, invoke, split

from simrec.client import RequestRejectedError, SimrecClient
from simrec.config import IndexSettings, ServingSettings, Settings
from simrec.index.faiss_index import build_index
from simrec.model.train import train
from simrec.serving.batching import MicroBatcher, QueueFullError, RequestTimeoutError
from simrec.serving.package import PackageResult, package_run
from simrec.serving.resources import available_cpus, threads_per_call
from simrec.serving.server import create_app

MAX_BODY_BYTES = 1 << 20


@contextlib.contextmanager
def running(app) -> Iterator[str]:
    """`app` under a real uvicorn on a free loopback port, in a thread; yields its URL."""
    sock = _free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        app.serving_app.close()


class Fashion(NamedTuple):
    model: mlflow.pyfunc.PyFuncModel
    items: pd.DataFrame
    settings: Settings
    result: PackageResult


@pytest.fixture(scope="module")
def fashion(fashion_lake, tmp_path_factory, make_settings):
    """A small packaged fashion model (3000 catalog items) and its items table."""
    _, lake, table = fashion_lake
    settings = make_settings(
        tmp_path_factory.mktemp("contract"),
        **{"lake.root": str(lake.root), "train.epochs": 1, "train.steps_per_epoch": 20},
    )
    trained = train(settings, lake, table)
    result = package_run(settings, lake, trained.run_id, force=True)  # served, not gated, here
    model = mlflow.pyfunc.load_model(result.registry_uri)
    items = model.unwrap_python_model()._metadata
    ids = np.asarray(model.unwrap_python_model()._item_ids)
    return Fashion(model, pd.DataFrame({"id": ids, **items}), settings, result)


@pytest.fixture(scope="module")
def served(fashion) -> Iterator[tuple[str, str]]:
    token = secrets.token_urlsafe(24)
    with running(create_app(fashion.model, token, MAX_BODY_BYTES, fashion.settings.serving)) as url:
        yield url, token


def records(rows: list[dict], params: dict | None = None) -> dict:
    return {"dataframe_records": rows, **({"params": params} if params else {})}


def predictions(response: httpx.Response) -> pd.DataFrame:
    assert response.status_code == 200, response.text
    return pd.DataFrame(response.json()["predictions"])


# -- by item ----------------------------------------------------------------------------------
def test_query_by_item_excludes_the_item_itself(served, fashion) -> None:
    url, token = served
    items = fashion.items
    item_id = items["id"].iloc[7]
    answer = predictions(invoke(url, token, records([{"item_id": item_id, "k": 6}])))
    assert len(answer) == 6 and item_id not in answer["item_id"].tolist()
    assert answer["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    # The stored embedding is the one the image would get: the same neighbours (minus itself).
    image_answer = fashion.model.predict(pd.DataFrame({"item_id": [item_id], "k": [6]}))
    assert image_answer["item_id"].tolist() == answer["item_id"].tolist()


def test_item_query_equals_the_image_query_of_that_item(fashion, fashion_lake) -> None:
    model, items = fashion.model, fashion.items
    _, lake, table = fashion_lake
    item_id = items["id"].iloc[3]
    row = lake.read(table.name, table.version, columns=["id", "image"]).to_pandas()
    payload = row.loc[row["id"] == item_id, "image"].iloc[0]
    by_image = model.predict(pd.DataFrame({"image": [b64(payload)], "k": [5]}))
    by_item = model.predict(pd.DataFrame({"item_id": [item_id], "k": [4]}))
    assert by_image["item_id"].iloc[0] == item_id  # the catalog photo finds itself first ...
    assert by_image["item_id"].tolist()[1:] == by_item["item_id"].tolist()  # ... by id never


def test_unknown_item_id_is_a_400_naming_it(served) -> None:
    url, token = served
    response = invoke(url, token, records([{"item_id": "no-such-item", "k": 3}]))
    assert response.status_code == 400
    assert "unknown item_id 'no-such-item'" in response.json()["message"]
    both = invoke(url, token, records([{"item_id": "x", "image": "abc"}]))
    assert both.status_code == 400 and "exactly one of 'image' or 'item_id'" in both.text


# -- filters ----------------------------------------------------------------------------------
def test_label_filter_returns_k_items_of_those_labels(served, fashion) -> None:
    url, token = served
    items = fashion.items
    rare = items["label_name"].value_counts().index[-1]  # the least frequent label
    count = int((items["label_name"] == rare).sum())
    query = items.loc[items["label_name"] != rare, "id"].iloc[0]  # from another label
    for body in (
        records([{"item_id": query, "k": 10}], {"labels": [rare]}),
        records([{"item_id": query, "k": 10, "labels": rare}]),
    ):
        answer = predictions(invoke(url, token, body))
        assert len(answer) == 10 and set(answer["label_name"]) == {rare}
    everything = predictions(
        invoke(url, token, records([{"item_id": query, "k": 100}], {"labels": [rare]}))
    )
    assert len(everything) == min(100, count)


def test_exclude_ids_never_come_back_and_k_stays_full(served, fashion) -> None:
    url, token = served
    items = fashion.items
    query = items["id"].iloc[0]
    first = predictions(invoke(url, token, records([{"item_id": query, "k": 5}])))
    excluded = first["item_id"].tolist()[:3]
    row_level = records([{"item_id": query, "k": 5, "exclude_ids": ",".join(excluded[:2])}])
    params_level = records([{"item_id": query, "k": 5}], {"exclude_ids": excluded})
    for body, gone in ((row_level, excluded[:2]), (params_level, excluded)):
        answer = predictions(invoke(url, token, body))
        assert len(answer) == 5 and not set(gone) & set(answer["item_id"])
        assert answer["item_id"].tolist()[: 5 - len(gone)] == first["item_id"].tolist()[len(gone) :]


def test_filter_mistakes_are_typed_400s(served) -> None:
    url, token = served
    cases = {
        "unknown labels ['Spaceship']": records([{"item_id": "x"}], {"labels": ["Spaceship"]}),
        "cannot filter by categories": records([{"item_id": "x", "categories": "chair"}]),
    }
    for fragment, body in cases.items():
        response = invoke(url, token, body)
        assert response.status_code == 400 and fragment in response.json()["message"], fragment


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_search_among_keys_stays_inside_them(kind: str) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = build_index([f"i{n}" for n in range(3000)], vectors, IndexSettings(kind=kind))
    among = np.arange(5, 3000, 50)
    ids, _ = index.search(vectors[:4], 10, among)
    allowed = {f"i{key}" for key in among}
    assert all(item in allowed for item in ids.ravel() if item is not None)
    if kind == "flat":  # exact: k of them whenever k exist, the true nearest ones
        exact = (1 - vectors[:4] @ vectors[among].T).argsort(axis=1)[:, :10]
        assert ids.tolist() == [[f"i{among[n]}" for n in row] for row in exact]
    np.testing.assert_allclose(index.vectors(np.asarray([7, 9])), vectors[[7, 9]], atol=1e-6)


def test_model_returns_k_filtered_items_even_from_an_approximate_index(fashion) -> None:
    """An HNSW search restricted to a few items can come back short: the model then searches
    those items exactly, so k come back whenever k are eligible."""
    model, items = fashion.model, fashion.items
    searcher = model.unwrap_python_model()
    stored = searcher.index.vectors(searcher._keys)
    original = searcher.index
    try:
        searcher.index = build_index(
            searcher._item_ids,
            stored,
            IndexSettings(kind="hnsw", hnsw_m=4, hnsw_ef_search=4, metric=original.settings.metric),
        )
        searcher._keys = np.asarray([searcher.index.key_of(i) for i in searcher._item_ids])
        rare = items["label_name"].value_counts().index[-1]
        query = items.loc[items["label_name"] != rare, "id"].iloc[0]
        frame = pd.DataFrame({"item_id": [query], "k": [40], "labels": [rare]})
        answer = model.predict(frame)
        assert len(answer) == 40 and set(answer["label_name"]) == {rare}
    finally:
        searcher.index = original
        searcher._keys = np.asarray([original.key_of(i) for i in searcher._item_ids])


# -- the client -------------------------------------------------------------------------------
def test_client_queries_by_item_with_filters_and_splits_big_batches(served, fashion) -> None:
    url, token = served
    items = fashion.items
    label = items["label_name"].iloc[0]
    with SimrecClient(url, token) as client:
        by_item = client.similar_to_item(items["id"].iloc[0], k=4, labels=[label])
        assert len(by_item) == 4 and {item.label for item in by_item} == {label}
        assert items["id"].iloc[0] not in [item.item_id for item in by_item]
        with pytest.raises(RequestRejectedError, match="unknown item_id"):
            client.similar_to_item("nope")
    payload = _catalog_image(fashion)
    with SimrecClient(url, token, max_batch_size=3) as client:
        batch = client.similar_batch([payload] * 7, k=2, exclude_ids=[items["id"].iloc[1]])
        assert [len(results) for results in batch] == [2] * 7
    with SimrecClient(url, token) as client:
        assert len(client.similar_batch([payload] * 70, k=1)) == 70  # > 64: split by /version


def _catalog_image(fashion) -> bytes:
    model = fashion.model
    return base64.b64decode(model.input_example["image"].iloc[0])


def test_bad_row_messages_name_the_row(served) -> None:
    url, token = served
    response = invoke(url, token, split([["not base64!", 2], ["also bad", 2]]))
    assert response.status_code == 400
    assert "image 0: not valid base64" in response.json()["message"]
    assert "image 1: not valid base64" in response.json()["message"]


# -- micro-batching, overload -----------------------------------------------------------------
def serving_settings(fashion: Fashion, **changes) -> ServingSettings:
    return fashion.settings.serving.model_copy(update=changes)


def concurrently(calls: list, workers: int) -> list:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_micro_batched_answers_equal_unbatched_ones_under_concurrent_load(fashion) -> None:
    model, items = fashion.model, fashion.items
    serving = serving_settings(fashion, batch_max_wait_ms=50.0, batch_max_rows=64)
    token = secrets.token_urlsafe(24)
    app = create_app(model, token, MAX_BODY_BYTES, serving)
    payload = _catalog_image(fashion)
    bodies = [records([{"item_id": items["id"].iloc[n], "k": 1 + n % 7}]) for n in range(20)]
    ids, labels = items["id"].tolist(), items["label_name"].tolist()
    image = b64(payload)
    bodies += [records([{"image": image, "k": 3}], {"labels": [labels[n]]}) for n in range(4)]
    bodies += [records([{"item_id": ids[30]}], {"exclude_ids": [ids[31]]})]
    expected = [
        model.predict(pd.DataFrame(body["dataframe_records"]), params=body.get("params"))
        for body in bodies
    ]
    with running(app) as url:
        answers = concurrently([lambda b=body: invoke(url, token, b) for body in bodies], 24)
        metrics = _metrics(httpx.get(f"{url}/metrics").text)
    for answer, want in zip(answers, expected, strict=True):
        got = predictions(answer)
        assert got["item_id"].tolist() == want["item_id"].tolist()
        np.testing.assert_allclose(got["distance"], want["distance"], atol=1e-5)
    batches = metrics["simrec_batch_requests"]
    calls = _sample(batches, "simrec_batch_requests_count")
    assert calls < len(bodies), "concurrent requests were not coalesced into fewer model calls"
    assert _sample(batches, "simrec_batch_requests_sum") == len(bodies)


def test_a_bad_image_fails_only_its_own_request(fashion) -> None:
    model, items = fashion.model, fashion.items
    serving = serving_settings(fashion, batch_max_wait_ms=50.0)
    token = secrets.token_urlsafe(24)
    good = [records([{"item_id": items["id"].iloc[n], "k": 2}]) for n in range(6)]
    bad = split([[b64(b"not an image at all"), 2]])
    with running(create_app(model, token, MAX_BODY_BYTES, serving)) as url:
        answers = concurrently([lambda b=body: invoke(url, token, b) for body in [*good, bad]], 7)
    assert [answer.status_code for answer in answers] == [200] * 6 + [400]
    assert "image 0: not a readable image" in answers[-1].json()["message"]


class _Poisoned:
    """A model whose batch call fails when it holds the poisoned request (the batcher must
    then answer every other request of that batch on its own)."""

    def __init__(self, delay: float = 0.0):
        self.seen: list[str] = []
        self.delay = delay

    def answer(self, requests: list[str]) -> list[pd.DataFrame]:
        time.sleep(self.delay)
        self.seen.extend(requests)
        if "poison" in requests:
            raise RuntimeError("poisoned")
        return [pd.DataFrame({"request": [request]}) for request in requests]


def test_a_failing_request_is_isolated_from_its_batch_mates() -> None:
    model = _Poisoned()
    batcher = MicroBatcher(max_rows=16, max_wait_s=0.2, max_requests=16)

    async def main():
        names = ["a", "b", "poison", "c"]
        tasks = [batcher.submit(model, name, 1, 10.0) for name in names]
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        answers = asyncio.run(main())
    finally:
        batcher.close()
    assert [a["request"][0] for a in answers if isinstance(a, pd.DataFrame)] == ["a", "b", "c"]
    assert isinstance(answers[2], RuntimeError)


def test_an_adaptive_wait_never_holds_a_lone_client_and_waits_for_known_peers() -> None:
    model = _Poisoned()
    batches: list[int] = []
    batcher = MicroBatcher(
        max_rows=16,
        max_wait_s=0.5,
        max_requests=16,
        on_batch=lambda stats: batches.append(stats.requests),
        adaptive_wait=True,
    )

    async def main() -> float:
        started = time.monotonic()
        for name in ("a", "b", "c"):  # one client, one request after the other
            await batcher.submit(model, name, 1, 10.0)
        alone = time.monotonic() - started
        for burst in range(2):  # four clients at once, twice
            await asyncio.gather(*(batcher.submit(model, f"{burst}{n}", 1, 10.0) for n in range(4)))
        return alone

    try:
        alone = asyncio.run(main())
    finally:
        batcher.close()
    assert alone < 0.4, f"a lone client waited for peers that never come ({alone:.2f} s)"
    assert batches[:3] == [1, 1, 1]
    assert batches[-1] == 4, f"the second burst was not answered as one batch: {batches}"


def test_a_full_queue_answers_503_with_retry_after_and_timed_out_requests_never_start(
    fashion,
) -> None:
    slow = _Poisoned(delay=0.5)
    batcher = MicroBatcher(max_rows=1, max_wait_s=0.0, max_requests=2)

    async def main():
        first = asyncio.ensure_future(batcher.submit(slow, "first", 1, 10.0))
        await asyncio.sleep(0.1)  # the worker holds "first" for 0.5 s
        late = asyncio.ensure_future(batcher.submit(slow, "late", 1, 0.2))
        queued = asyncio.ensure_future(batcher.submit(slow, "queued", 1, 10.0))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await batcher.submit(slow, "refused", 1, 10.0)
        return await asyncio.gather(first, late, queued, return_exceptions=True)

    try:
        first, late, queued = asyncio.run(main())
    finally:
        batcher.close()
    assert isinstance(late, RequestTimeoutError) and "late" not in slow.seen
    assert slow.seen == ["first", "queued"]

    # Over HTTP: the server answers 503 + Retry-After at once when its queue is full.
    model = fashion.model
    python_model = model.unwrap_python_model()
    original = python_model.answer_columns  # what the server's batcher calls

    def slow_answer(requests):
        time.sleep(0.3)
        return original(requests)

    serving = serving_settings(
        fashion, queue_max_requests=1, batch_max_rows=1, batch_max_wait_ms=0.0, retry_after_s=2
    )
    token = secrets.token_urlsafe(24)
    with running(create_app(model, token, MAX_BODY_BYTES, serving)) as url:
        python_model.answer_columns = slow_answer
        try:
            body = records([{"item_id": fashion.items["id"].iloc[0], "k": 1}])
            answers = concurrently([lambda: invoke(url, token, body)] * 6, 6)
        finally:
            del python_model.answer_columns
        refused = [answer for answer in answers if answer.status_code == 503]
        assert refused and all(answer.headers["retry-after"] == "2" for answer in refused)
        assert refused[0].json()["error_code"] == "OVERLOADED"
        assert any(answer.status_code == 200 for answer in answers)
        metrics = _metrics(httpx.get(f"{url}/metrics").text)
    rejected = metrics["simrec_rejected"]
    assert _sample(rejected, "simrec_rejected_total", reason="queue_full") == len(refused)


# -- operations -------------------------------------------------------------------------------
def _metrics(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _sample(family, name: str, **labels) -> float:
    return sum(
        sample.value
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_parse_and_count_requests_latency_batches_and_the_model(served, fashion) -> None:
    url, token = served
    item_id = fashion.items["id"].iloc[0]
    assert invoke(url, token, records([{"item_id": item_id, "k": 2}])).status_code == 200
    assert invoke(url, token, records([{"item_id": "missing"}])).status_code == 400
    response = httpx.get(f"{url}/metrics")  # open by default (serving.metrics_open)
    assert response.status_code == 200
    metrics = _metrics(response.text)
    requests = metrics["simrec_requests"]
    assert _sample(requests, "simrec_requests_total", path="/invocations", status="200") >= 1
    assert _sample(requests, "simrec_requests_total", path="/invocations", status="400") >= 1
    latency = metrics["simrec_request_latency_seconds"]
    assert _sample(latency, "simrec_request_latency_seconds_count", status="200") >= 1
    assert _sample(metrics["simrec_batch_rows"], "simrec_batch_rows_count") >= 1
    assert _sample(metrics["simrec_request_rows"], "simrec_request_rows_sum") >= 1
    assert _sample(metrics["simrec_index_size"], "simrec_index_size") == 3000
    assert _sample(metrics["simrec_model_loaded_at_seconds"], "simrec_model_loaded_at_seconds") > 0
    assert _sample(metrics["simrec_ready"], "simrec_ready") == 1
    assert "simrec_model_info" in metrics


def test_metrics_can_require_the_token(fashion) -> None:
    token = secrets.token_urlsafe(24)
    serving = serving_settings(fashion, metrics_open=False)
    with running(create_app(fashion.model, token, MAX_BODY_BYTES, serving)) as url:
        assert httpx.get(f"{url}/metrics").status_code == 401
        authorised = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"})
        assert authorised.status_code == 200 and "simrec_requests_total" in authorised.text


def test_health_is_readiness_and_flips_to_503_when_the_model_cannot_answer(fashion) -> None:
    token = secrets.token_urlsafe(24)
    app = create_app(fashion.model, token, MAX_BODY_BYTES, fashion.settings.serving)
    live = app.serving_app.live
    searcher = fashion.model.unwrap_python_model()
    with running(app) as url:
        assert httpx.get(f"{url}/health").status_code == 200
        index = searcher.index
        searcher.index = None  # the model can no longer search
        try:
            assert not live.check()
            broken = httpx.get(f"{url}/health")
            assert httpx.get(f"{url}/ping").status_code == 200  # liveness: still alive
        finally:
            searcher.index = index
        assert broken.status_code == 503 and broken.json()["error_code"] == "NOT_READY"
        assert live.check() and httpx.get(f"{url}/health").status_code == 200


@pytest.mark.parametrize("setting", [0, 3])
def test_the_server_searches_each_micro_batch_on_the_cpus_its_worker_has(fashion, setting) -> None:
    """One batch worker (the default) runs one model call at a time, so its search may use
    every CPU (`serving.batch_search_threads`, 0 = CPUs per worker) instead of the bundle's
    own one thread, which is sized for servers that run requests side by side."""
    serving = serving_settings(fashion, batch_workers=1, batch_search_threads=setting)
    searcher = fashion.model.unwrap_python_model()
    bundled = searcher.config.search_threads  # earlier servers of this model changed it
    assert fashion.model.model_config["search_threads"] == 1  # as packaged
    index, seen = searcher.index, []
    search_keys = index.search_keys

    def recording(*args, **kwargs):
        seen.append(kwargs["threads"])
        return search_keys(*args, **kwargs)

    index.search_keys = recording
    token = secrets.token_urlsafe(24)
    body = records([{"item_id": fashion.items["id"].iloc[0], "k": 3}])
    try:
        with running(create_app(fashion.model, token, MAX_BODY_BYTES, serving)) as url:
            seen.clear()  # the start-up self-check
            assert invoke(url, token, body).status_code == 200
    finally:
        del index.search_keys
        searcher.config.search_threads = bundled
    assert seen and set(seen) == {setting or available_cpus()}


def test_alias_move_is_followed_without_a_failed_request(fashion) -> None:
    """Serve models:/NAME@champion; register a second version and move the alias while
    requests keep coming: every request succeeds, and answers switch to version 2."""
    result = fashion.result
    serving = serving_settings(fashion, reload_seconds=0.3)
    client = mlflow.MlflowClient()
    uri = f"models:/{result.registered_name}@champion"
    token = secrets.token_urlsafe(24)
    app = create_app(None, token, MAX_BODY_BYTES, serving, model_uri=uri)
    body = records([{"item_id": fashion.items["id"].iloc[0], "k": 3}])
    statuses, versions = [], []
    with running(app) as url:
        first = httpx.get(f"{url}/version").json()
        assert first["name"] == result.registered_name and first["alias"] == "champion"
        assert first["version"] == str(result.version)
        assert first["lineage"]["training_run_id"] == result.lineage["training_run_id"]
        new = mlflow.register_model(result.model_uri, result.registered_name)
        client.set_registered_model_alias(result.registered_name, "champion", new.version)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            answers = concurrently([lambda: invoke(url, token, body)] * 4, 4)
            statuses += [answer.status_code for answer in answers]
            versions += [answer.headers["x-simrec-model-version"] for answer in answers]
            if versions[-1] == str(new.version):
                break
        after = httpx.get(f"{url}/version").json()
        switched = app.serving_app.live.current.python_model.config.search_threads
    assert set(statuses) == {200}, statuses
    assert switched == threads_per_call(0, serving.batch_workers or available_cpus())
    assert versions[0] == str(result.version) and versions[-1] == str(new.version)
    assert after["version"] == str(new.version)
    client.set_registered_model_alias(result.registered_name, "champion", result.version)


# -- the style model: the same contract -------------------------------------------------------
@pytest.fixture(scope="module")
def style(tmp_path_factory, make_settings):
    """`simrec-style` built on a slice of the real IKEA catalog (chairs, tables, sofas)."""
    from test_style_end_to_end import IKEA_DIR, SLICE, _ikea_slice

    from simrec.lake.catalog import ingest_catalog
    from simrec.lake.tables import Lakehouse
    from simrec.style.build import build_style
    from simrec.style.pyfunc import log_style_pyfunc
    from simrec.tracking import setup_mlflow

    if not (IKEA_DIR / "images").is_dir():
        pytest.skip(f"IKEA dataset not found at {IKEA_DIR}")
    root = tmp_path_factory.mktemp("style_shop")
    settings = make_settings(root, **SLICE)
    lake = Lakehouse(settings.lake.root)
    ingest_catalog(lake, settings.catalog, settings.lake, source_dir=_ikea_slice(root / "ikea"))
    built = build_style(settings, lake)
    setup_mlflow(settings.mlflow)
    with mlflow.start_run(run_id=built.run_id):
        uri = log_style_pyfunc(built.folder, "simrec-style", settings, alias="champion")
    return mlflow.pyfunc.load_model(uri)


@pytest.mark.slow
def test_both_models_share_one_contract_and_its_messages(served, fashion, style) -> None:
    fashion_url, token = served
    fashion_item = fashion.items["id"].iloc[0]
    style_item = str(style.unwrap_python_model().bundle.items["id"].iloc[0])
    good = b64(_catalog_image(fashion))
    cases = [
        (split([["not base64!", 2]]), "image 0: not valid base64"),
        (split([[b64(b"no pixels here"), 2]]), "image 0: not a readable image"),
        (split([[good, 0]]), "k in row 0 must be from 1 to 100, got 0"),
        (split([[good, 1]] * 65), "65 queries in one request; the limit is 64"),
        (records([{"item_id": "nope"}]), "row 0: unknown item_id 'nope'"),
        (records([{"k": 2}]), "expected a column 'image'"),
        (records([{"image": good, "item_id": "x"}]), "exactly one of 'image' or 'item_id'"),
        (records([{"image": good}], {"labels": ["x"]}), "cannot filter by labels"),
    ]
    with running(create_app(style, token, MAX_BODY_BYTES)) as style_url:
        for body, fragment in cases:
            for url in (fashion_url, style_url):
                response = invoke(url, token, body)
                assert response.status_code == 400, (url, fragment, response.text)
                message = response.json()["message"]
                if "labels" in fragment and url == fashion_url:  # fashion has labels
                    assert "unknown labels ['x']" in message
                else:
                    assert fragment in message, (url, message)
        # Answers: by item (itself excluded, other categories by default), filters.
        item_answer = predictions(invoke(style_url, token, records([{"item_id": style_item}])))
        own = style.unwrap_python_model()._category_of[style_item]
        assert style_item not in item_answer["item_id"].tolist()
        assert own not in set(item_answer["category"])
        chosen = sorted(set(item_answer["category"]))[0]
        first = item_answer.loc[item_answer["category"] == chosen, "item_id"].iloc[0]
        body = records(
            [{"item_id": style_item, "k": 3}], {"categories": [chosen], "exclude_ids": [first]}
        )
        filtered = predictions(invoke(style_url, token, body))
        assert set(filtered["category"]) == {chosen} and len(filtered) == 3
        assert first not in filtered["item_id"].tolist()
    assert fashion_item


@pytest.mark.slow
def test_style_model_embeds_a_request_as_one_batch_without_progress_bars(style, capfd) -> None:
    model = style.unwrap_python_model()
    encoder = model.bundle.encoder
    calls = []
    original = encoder.encode

    def counting(pixels):
        calls.append(len(pixels))
        return original(pixels)

    encoder.encode = counting
    try:
        payloads = model.bundle.items["id"].astype(str).tolist()[:3]
        frame = pd.DataFrame({"item_id": payloads[:1], "k": [1]})
        colours = [_png_of(colour) for colour in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
        images = pd.DataFrame({"image": [b64(p) for p in colours], "k": [2, 2, 2]})
        capfd.readouterr()
        style.predict(images)
        style.predict(frame)
        captured = capfd.readouterr()
    finally:
        encoder.encode = original
    assert calls == [3]  # three images, one encoder call; the item query needs none
    assert "style features" not in captured.err + captured.out


def _png_of(rgb: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), rgb).save(buffer, format="PNG")
    return buffer.getvalue()
