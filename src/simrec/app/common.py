"""What both pages share: settings, cached backends and samples, the query picker, result grids."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass

import pyarrow.parquet as pq
import streamlit as st

from simrec.app.backend import (
    Backend,
    BackendError,
    Recommendation,
    api_token,
    configured_url,
    make_backend,
)
from simrec.app.pictures import data_url, display_png
from simrec.config import Settings, load_settings
from simrec.images import InvalidImageError
from simrec.lake.tables import Lakehouse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    item_id: str
    caption: str
    image: bytes
    category: str | None = None


def _cli_overrides(argv: list[str]) -> tuple[str | None, tuple[str, ...]]:
    """`--config`/`--set` passed after `streamlit run main.py --` by `simrec app`."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    parser.add_argument("--set", action="append", default=[])
    known, _ = parser.parse_known_args(argv)
    return known.config, tuple(known.set)


@st.cache_resource(show_spinner=False)
def _load_settings(config: str | None, overrides: tuple[str, ...]) -> Settings:
    return load_settings(config, list(overrides))


def settings() -> Settings:
    config, overrides = _cli_overrides(sys.argv[1:])
    return _load_settings(config, overrides)


@st.cache_resource(show_spinner=False)
def _backend(url: str | None, model_uri: str, token: str | None, tracking_uri: str) -> Backend:
    # tracking_uri is part of the cache key: the same model URI names another model elsewhere.
    if not url:
        from simrec.tracking import setup_mlflow

        setup_mlflow(settings().mlflow)
    chosen = make_backend(url, model_uri, token, settings().serving.client_timeout_s)
    chosen.prepare()  # cached: a model is loaded once per process, not per interaction
    return chosen


def backend(kind: str) -> Backend:
    """The fashion or style backend as configured (raises BackendError, e.g. no token)."""
    app = settings().app
    if kind == "fashion":
        url, model_uri = configured_url(app.api_url, app.api_url_env), app.fashion_model_uri
    else:
        url = configured_url(app.style_api_url, app.style_api_url_env)
        model_uri = app.style_model_uri
    token = api_token(app, st.secrets) if url else None
    return _backend(url, model_uri, token, settings().mlflow.tracking_uri)


@st.cache_data(show_spinner=False)
def fashion_samples(lake_root: str, table: str, count: int, label_names: tuple[str, ...]):
    rows = Lakehouse(lake_root).read(table, columns=["id", "split", "label", "image"])
    rows = sorted((r for r in rows.to_pylist() if r["split"] == "test"), key=lambda r: r["id"])
    return [
        Sample(
            row["id"], label_names[row["label"]] if label_names else str(row["label"]), row["image"]
        )
        for row in rows[:count]
    ]


@st.cache_data(show_spinner=False)
def furniture_samples(lake_root: str, table: str, count: int, categories: tuple[str, ...]):
    """Catalog items taken in turn from each category, so the grid shows them all."""
    rows = Lakehouse(lake_root).read(table, columns=["id", "category", "name"]).to_pylist()
    by_category: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r["id"]):
        if not categories or row["category"] in categories:
            by_category.setdefault(row["category"], []).append(row)
    chosen: list[dict] = []
    while len(chosen) < count and any(by_category.values()):
        for items in by_category.values():
            if items and len(chosen) < count:
                chosen.append(items.pop(0))
    images = catalog_images(lake_root, table, tuple(row["id"] for row in chosen))
    return [
        Sample(row["id"], row["name"] or row["id"], images[row["id"]], row["category"])
        for row in chosen
    ]


@st.cache_data(show_spinner=False)
def catalog_categories(lake_root: str, table: str) -> list[str]:
    rows = Lakehouse(lake_root).read(table, columns=["category"])
    return sorted(set(rows.column("category").to_pylist()))


@st.cache_data(show_spinner=False, max_entries=256)
def catalog_images(lake_root: str, table: str, item_ids: tuple[str, ...]) -> dict[str, bytes]:
    files = Lakehouse(lake_root).file_uris(table)
    if not files or not item_ids:
        return {}
    found = pq.read_table(files, columns=["id", "image"], filters=[("id", "in", list(item_ids))])
    return dict(zip(found.column("id").to_pylist(), found.column("image").to_pylist(), strict=True))


# -- the query ------------------------------------------------------------------------------
# Thumbnails are served at the width they are shown; `pixelated` keeps any browser rescaling
# (zoom, a narrow column) from blurring Fashion-MNIST's 28×28 pixels.
PAGE_STYLE = "<style>[data-testid='stImage'] img {image-rendering: pixelated;}</style>"


def page_style() -> None:
    st.html(PAGE_STYLE)


def picture(payload: bytes, width: int, source: str) -> str | None:
    """`payload` as a PNG data URL `width` wide for st.image, or None (logged) when it cannot
    be shown."""
    try:
        serving = settings().serving
        return data_url(
            display_png(payload, width, source, serving.max_image_pixels, serving.image_formats)
        )
    except InvalidImageError as error:
        log.warning("cannot show %s", error)
        return None


def _pick(state_key: str, sample: Sample) -> None:
    st.session_state[state_key] = {"image": sample.image, "source": sample.caption}


def _more_like(state_key: str, item: Recommendation, stored_image: bytes | None) -> None:
    st.session_state[state_key] = {
        "item_id": item.item_id,
        "source": f"{item.title} (item {item.item_id})",
        "image": stored_image,
    }


def query_picker(page: str, samples: list[Sample], columns: int) -> dict | None:
    """Upload or pick a sample; the query is kept in session state: {image, source} for an
    image, {item_id, source, image} for "more like this" on a catalog item, or {error}."""
    app = settings().app
    state_key = f"{page}_query"
    uploaded = st.file_uploader("Upload an image", type=app.upload_types, key=f"{page}_upload")
    if uploaded is not None and st.session_state.get(f"{page}_upload_id") != uploaded.file_id:
        # Only a *new* upload replaces the query, so picking a sample afterwards still works.
        st.session_state[f"{page}_upload_id"] = uploaded.file_id
        if uploaded.size > app.max_upload_bytes:
            st.session_state[state_key] = {
                "error": f"{uploaded.name} is larger than {app.max_upload_bytes} bytes"
            }
        else:
            st.session_state[state_key] = {"image": uploaded.getvalue(), "source": uploaded.name}
    if samples:
        st.write("…or pick one:")
        grid = st.columns(columns)
        for position, sample in enumerate(samples):
            with grid[position % columns]:
                shown = picture(sample.image, app.thumbnail_px, sample.caption)
                if shown is not None:
                    st.image(shown, caption=sample.caption, width=app.thumbnail_px)
                st.button(
                    "Pick",
                    key=f"{page}_pick_{sample.item_id}",
                    on_click=_pick,
                    args=(state_key, sample),
                    width="stretch",
                )
    else:
        st.info("No samples in the lakehouse (run the ingest step); upload an image instead.")
    return st.session_state.get(state_key)


def checked_query(query: dict) -> bool:
    """Show the query; False (with the reason shown) when it is not a usable image."""
    app = settings().app
    if "error" in query:
        st.error(f"Cannot use this upload: {query['error']}.")
        return False
    if query.get("image") is None:  # "more like this" on an item with no stored picture
        st.write(f"More like **{query['source']}**")
        return True
    try:
        serving = settings().serving
        shown = display_png(
            query["image"],
            app.query_px,
            query["source"],
            serving.max_image_pixels,
            serving.image_formats,
        )
    except InvalidImageError as error:
        st.error(f"Cannot use this upload: {error}. Upload a PNG, JPEG or other image file.")
        return False
    label = "More like" if "item_id" in query else "Query"
    st.image(data_url(shown), width=app.query_px)
    st.caption(f"{label}: {query['source']}")
    return True


def run_query(page_backend: str, query: dict, k: int, categories: list[str] | None = None):
    """The backend's answer for an image or a catalog item, or None with the reason shown;
    says which model answered and how long it took."""
    try:
        chosen = backend(page_backend)
        started = time.perf_counter()
        with st.spinner("Finding similar items…"):
            if "item_id" in query:
                items = chosen.similar_to_item(
                    query["item_id"], k, categories, stored_image=query.get("image")
                )
            else:
                items = chosen.recommend(query["image"], k, categories)
        elapsed_ms = (time.perf_counter() - started) * 1000
    except BackendError as error:
        st.error(str(error))
        return None
    info = chosen.model_info()
    answered_by = info.describe() if info is not None else chosen.description
    st.caption(f"Answered by {answered_by} in {elapsed_ms:.0f} ms")
    return items


def result_grid(
    page: str, items: list[Recommendation], pictures: dict[str, bytes], columns: int
) -> None:
    """Each result: its picture, rank, title and distance, and a "More like this" button."""
    app = settings().app
    grid = st.columns(columns)
    for position, item in enumerate(items):
        stored = item.thumbnail or pictures.get(item.item_id)
        shown = picture(stored, app.thumbnail_px, item.title) if stored else None
        with grid[position % columns]:
            if shown is not None:
                st.image(shown, width=app.thumbnail_px)
            st.caption(f"#{item.rank} {item.title} · distance {item.distance:.3f}")
            st.button(
                "More like this",
                key=f"{page}_more_{item.category}_{item.rank}_{item.item_id}",
                on_click=_more_like,
                args=(f"{page}_query", item, stored),
                width="stretch",
            )
