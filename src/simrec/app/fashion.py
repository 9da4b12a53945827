"""Fashion page: the k Fashion-MNIST items most like an uploaded or picked image."""

from __future__ import annotations

import streamlit as st

from simrec.app import common


def render() -> None:
    settings = common.settings()
    st.header("Fashion: look-alikes")
    try:
        samples = common.fashion_samples(
            str(settings.lake.root),
            settings.lake.fashion_table,
            settings.app.sample_grid,
            tuple(settings.fashion_mnist.label_names),
        )
    except (OSError, LookupError) as error:  # no lakehouse / table yet
        st.warning(f"Fashion-MNIST samples are not available: {error}")
        samples = []
    k = st.slider(
        "How many similar items (k)", 1, min(settings.recommend.max_k, 30), settings.recommend.k
    )
    query = common.query_picker(
        "fashion", samples, settings.app.grid_columns, settings.app.max_upload_bytes
    )
    if query is None:
        return
    image = common.checked_query(
        query, settings.serving.max_image_pixels, settings.serving.image_formats
    )
    if image is None:
        return
    items = common.run_query("fashion", image, k)
    if items is None:
        return
    st.subheader(f"{len(items)} most similar items")
    common.result_grid(items, {}, settings.app.grid_columns)
