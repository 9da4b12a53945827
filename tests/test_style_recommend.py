"""Style build on a small synthetic catalog in a real Delta lake: per-category indexes saved and
loaded, cross-category recommendations, and HR@n where the right answer is known.

Items are coloured shapes on a studio-white background; each room holds the chair, table and
sofa of one colour, so "goes together" means "same colour" here.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageDraw

from simrec.images import sha256_hex
from simrec.lake.catalog import ITEM_ROOMS_SCHEMA, ITEMS_SCHEMA
from simrec.lake.tables import Lakehouse
from simrec.style.build import build_style
from simrec.style.bundle import StyleBundle
from simrec.style.evaluate import evaluate_bundle
from simrec.style.indexes import CategoryIndexes
from simrec.style.recommend import recommend_for_payload

COLOURS = {
    "red": (200, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 60, 200),
    "yellow": (230, 200, 40),
    "brown": (110, 70, 30),
}
CATEGORIES = ("chair", "table", "sofa")
TINY_STYLE = {
    "style.featurizer": "gram",
    "style.backbone": "vgg16",
    "style.weights": "random",
    "style.image_size": 32,
    "style.layers": ["block1_conv2", "block2_conv1"],
    "style.layer_weights": [1.0, 1.0],
    "style.pca_dims": 6,
    "style.min_queries": 1,
    "style.pairs": ["chair:table", "sofa:chair"],
    "style.hit_at": [1, 2],
}


def _image(colour: tuple[int, int, int], shape: int) -> bytes:
    image = Image.new("RGB", (48, 48), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    box = [(8, 8, 40, 40), (4, 14, 44, 34), (14, 4, 34, 44)][shape]
    draw.rectangle(box, fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def synthetic_catalog(lake: Lakehouse) -> dict[str, bytes]:
    """Write items and item-room tables; returns item id -> image bytes."""
    now = datetime.now(UTC)
    images, rows, pairs = {}, [], []
    for shape, category in enumerate(CATEGORIES):
        for colour, rgb in COLOURS.items():
            item_id = f"{category}-{colour}"
            images[item_id] = payload = _image(rgb, shape)
            rows.append(
                {
                    "id": item_id,
                    "category": category,
                    "folder": category,
                    "name": f"{colour.upper()} {category}",
                    "type": None,
                    "colour": colour,
                    "size": None,
                    "description": None,
                    "image": payload,
                    "sha256": sha256_hex(payload),
                    "source": "synthetic",
                    "ingested_at": now,
                }
            )
            pairs.append(
                {"id": f"{item_id}|room-{colour}", "item_id": item_id, "room_id": f"room-{colour}"}
            )
    lake.insert_new("catalog_items", pa.Table.from_pylist(rows, schema=ITEMS_SCHEMA))
    lake.insert_new("catalog_item_rooms", pa.Table.from_pylist(pairs, schema=ITEM_ROOMS_SCHEMA))
    return images


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, make_settings):
    root = tmp_path_factory.mktemp("style")
    settings = make_settings(root, **TINY_STYLE)
    lake = Lakehouse(settings.lake.root)
    images = synthetic_catalog(lake)
    result = build_style(settings, lake, output_dir=root / "bundle", track=False)
    return settings, lake, images, result


def test_one_index_per_category_saved_and_loaded(built, tmp_path: Path) -> None:
    _, _, _, result = built
    indexes = result.bundle.indexes
    assert indexes.categories == sorted(CATEGORIES)
    assert all(len(indexes.indexes[c]) == len(COLOURS) for c in CATEGORIES)
    indexes.save(tmp_path / "indexes")
    loaded = CategoryIndexes.load(tmp_path / "indexes")
    assert loaded.metric == indexes.metric == "l2"
    queries = result.bundle.vectors[:3]
    for category in CATEGORIES:
        ids, distances = indexes.search(queries, category, 4)
        loaded_ids, loaded_distances = loaded.search(queries, category, 4)
        assert ids.tolist() == loaded_ids.tolist()
        np.testing.assert_allclose(distances, loaded_distances)


def test_bundle_round_trip_keeps_vectors_and_lineage(built) -> None:
    _, lake, images, result = built
    loaded = StyleBundle.load(result.folder)
    assert loaded.items["id"].tolist() == sorted(images)
    np.testing.assert_allclose(loaded.vectors, result.bundle.vectors)
    assert loaded.meta["items_table"]["version"] == lake.version("catalog_items")
    assert loaded.meta["weights_source"].startswith("random")
    # The loaded encoder reproduces the stored vectors from the images.
    pixels = result.catalog.pixels(loaded.encoder.image_size)
    np.testing.assert_allclose(loaded.encoder.encode(pixels[:4]), loaded.vectors[:4], atol=1e-4)


def test_recommend_returns_only_the_requested_categories(built) -> None:
    _, _, images, result = built
    bundle = result.bundle
    asked = recommend_for_payload(bundle, images["chair-red"], n=3, to=["table", "sofa"])
    assert {r.category for r in asked} == {"table", "sofa"}
    for category in ("table", "sofa"):
        ranked = [r for r in asked if r.category == category]
        assert [r.rank for r in ranked] == [1, 2, 3]
        assert all(r.item_id.startswith(category) for r in ranked)
        assert [r.distance for r in ranked] == sorted(r.distance for r in ranked)
    # The style match is the same colour.
    assert {r.item_id for r in asked if r.rank == 1} == {"table-red", "sofa-red"}


def test_recommend_skips_the_query_category_unless_asked(built) -> None:
    _, _, images, result = built
    default = recommend_for_payload(result.bundle, images["chair-blue"], n=2)
    assert {r.category for r in default} == {"table", "sofa"}  # own category inferred, skipped
    with_own = recommend_for_payload(result.bundle, images["chair-blue"], n=2, include_own=True)
    assert {r.category for r in with_own} == set(CATEGORIES)
    chairs = [r.item_id for r in with_own if r.category == "chair"]
    assert "chair-blue" not in chairs and len(chairs) == 2  # never the query item itself
    named = recommend_for_payload(result.bundle, images["chair-blue"], n=1, to=["chair"])
    assert [r.category for r in named] == ["chair"]
    with pytest.raises(ValueError, match="unknown categories"):
        recommend_for_payload(result.bundle, images["chair-blue"], n=1, to=["lamp"])


def test_hit_ratio_of_the_bundle_on_the_known_answer(built) -> None:
    settings, lake, _, result = built
    evaluation = evaluate_bundle(settings, lake, result.bundle)
    by_pair = {pair.pair: pair for pair in evaluation.pairs}
    chair_table = by_pair["chair:table"]
    assert chair_table.queries == len(COLOURS) and chair_table.pool == len(COLOURS)
    assert chair_table.model[1] == 1.0  # every chair's nearest table has its colour
    assert chair_table.random == pytest.approx({1: 1 / 5, 2: 2 / 5})
    assert chair_table.colour[1] == 1.0  # colour alone solves this toy catalog too
    assert by_pair["sofa:chair"].model[1] == 1.0


def test_served_model_encodes_a_request_in_bounded_chunks(built) -> None:
    """A request's new photos go through the backbone `style.serve_encode_rows` at a time (what
    bounds a server's memory per request), with the same answers as all at once."""
    import base64
    from types import SimpleNamespace

    import pandas as pd

    from simrec.style.pyfunc import ARTIFACT_KEY, StylePyfunc, style_limits

    settings, _, _, result = built
    context = SimpleNamespace(artifacts={ARTIFACT_KEY: str(result.folder)})
    # Photos not in the catalog (a catalog photo is answered from its stored vector).
    photos = [_image((40 * n, 200 - 30 * n, 90), n % 3) for n in range(5)]
    request = pd.DataFrame({"image": [base64.b64encode(photo).decode() for photo in photos]})

    answers = {}
    for rows in (2, None):
        model = StylePyfunc(style_limits(settings), encode_rows=rows)
        model.load_context(context)
        encoder, sizes = model.bundle.encoder, []
        encode = encoder.encode

        def counting(pixels, encode=encode, sizes=sizes):
            sizes.append(len(pixels))
            return encode(pixels)

        encoder.encode = counting
        answers[rows] = model.predict(None, request)
        assert sizes == ([2, 2, 1] if rows == 2 else [5])
    pd.testing.assert_frame_equal(answers[2], answers[None], check_exact=False, atol=1e-5)
