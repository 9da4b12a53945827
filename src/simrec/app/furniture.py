"""Furniture page: "complete the look", style-matched IKEA items in each chosen category."""

from __future__ import annotations

import streamlit as st

from simrec.app import common


def render() -> None:
    settings = common.settings()
    lake_root, table = str(settings.lake.root), settings.lake.items_table
    st.header("Furniture: complete the look")
    try:
        categories = common.catalog_categories(lake_root, table)
        samples = common.furniture_samples(
            lake_root, table, settings.app.sample_grid, tuple(settings.style.categories)
        )
    except (OSError, LookupError) as error:  # no lakehouse / table yet
        st.warning(f"IKEA catalog items are not available: {error}")
        categories, samples = list(settings.style.categories), []
    targets = st.multiselect(
        "Target categories (none chosen: every category but the query's own)",
        categories,
        key="furniture_targets",
    )
    n = st.slider("Items per category", 1, min(settings.style.max_n, 20), min(settings.style.n, 5))
    query = common.query_picker(
        "furniture", samples, settings.app.grid_columns, settings.app.max_upload_bytes
    )
    if query is None:
        return
    image = common.checked_query(
        query, settings.serving.max_image_pixels, settings.serving.image_formats
    )
    if image is None:
        return
    items = common.run_query("style", image, n, targets or None)
    if items is None:
        return
    try:
        pictures = common.catalog_images(lake_root, table, tuple(item.item_id for item in items))
    except (OSError, LookupError):  # REST mode without the lakehouse: names only
        pictures = {}
    by_category: dict[str, list] = {}
    for item in items:
        by_category.setdefault(item.category or "items", []).append(item)
    for category, found in by_category.items():
        st.subheader(category)
        common.result_grid(found, pictures, settings.app.grid_columns)
