"""The request contract over a real server on 127.0.0.1: queries by catalog item, filters
applied inside the search, and the same contract and messages for the fashion and the style
model."""

from __future__ import annotations

import base64
import contextlib
import secrets
import threading
import time
from collections.abc import Iterator

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import uvicorn
from test_serving import _free_socket, b64, invoke, split

from simrec.client import RequestRejectedError, SimrecClient
from simrec.config import IndexSettings
from simrec.index.build import build_catalog_index
from simrec.index.faiss_index import build_index
from simrec.model.train import train
from simrec.serving.package import package_run
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


@pytest.fixture(scope="module")
def fashion(fashion_lake, tmp_path_factory, make_settings):
    """A small packaged fashion model (3000 catalog items) and its items table."""
    _, lake, table = fashion_lake
    settings = make_settings(
        tmp_path_factory.mktemp("contract"),
        **{"lake.root": str(lake.root), "train.epochs": 1, "train.steps_per_epoch": 20},
    )
    trained = train(settings, lake, table)
    build_catalog_index(settings, lake, trained.run_id)
    result = package_run(settings, lake, trained.run_id)
    model = mlflow.pyfunc.load_model(result.registry_uri)
    items = model.unwrap_python_model()._metadata
    ids = np.asarray(model.unwrap_python_model()._item_ids)
    return model, pd.DataFrame({"id": ids, **items})


@pytest.fixture(scope="module")
def served(fashion) -> Iterator[tuple[str, str]]:
    token = secrets.token_urlsafe(24)
    with running(create_app(fashion[0], token, MAX_BODY_BYTES)) as url:
        yield url, token


def records(rows: list[dict], params: dict | None = None) -> dict:
    return {"dataframe_records": rows, **({"params": params} if params else {})}


def predictions(response: httpx.Response) -> pd.DataFrame:
    assert response.status_code == 200, response.text
    return pd.DataFrame(response.json()["predictions"])


# -- by item ----------------------------------------------------------------------------------
def test_query_by_item_excludes_the_item_itself(served, fashion) -> None:
    url, token = served
    _, items = fashion
    item_id = items["id"].iloc[7]
    answer = predictions(invoke(url, token, records([{"item_id": item_id, "k": 6}])))
    assert len(answer) == 6 and item_id not in answer["item_id"].tolist()
    assert answer["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    # The stored embedding is the one the image would get: the same neighbours (minus itself).
    image_answer = fashion[0].predict(pd.DataFrame({"item_id": [item_id], "k": [6]}))
    assert image_answer["item_id"].tolist() == answer["item_id"].tolist()


def test_item_query_equals_the_image_query_of_that_item(fashion, fashion_lake) -> None:
    model, items = fashion
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
    _, items = fashion
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
    _, items = fashion
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
    model, items = fashion
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
    _, items = fashion
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
    model, _ = fashion
    return base64.b64decode(model.input_example["image"].iloc[0])


def test_bad_row_messages_name_the_row(served) -> None:
    url, token = served
    response = invoke(url, token, split([["not base64!", 2], ["also bad", 2]]))
    assert response.status_code == 400
    assert "image 0: not valid base64" in response.json()["message"]
    assert "image 1: not valid base64" in response.json()["message"]
