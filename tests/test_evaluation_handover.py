"""What the package step hands to the evaluation of its own bundle, and the thumbnails it
keeps: the shortcuts must give exactly what the long way gives."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from simrec.evaluation.decoded import DecodedItems
from simrec.serving.package import thumbnail_png


def _png(size: tuple[int, int], text: str | None = None) -> bytes:
    buffer = io.BytesIO()
    info = None
    if text is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("comment", text)
    Image.new("L", size, 128).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_a_png_that_fits_is_its_own_thumbnail_anything_else_is_shrunk_and_re_encoded() -> None:
    small = _png((28, 28))
    assert thumbnail_png(small, 64) is small
    for payload in (_png((28, 28), "where it was taken"), _png((200, 100))):
        thumbnail = thumbnail_png(payload, 64)
        assert thumbnail != payload
        image = Image.open(io.BytesIO(thumbnail))
        assert image.format == "PNG" and max(image.size) <= 64 and not image.info


def test_decoded_items_answer_in_the_order_asked() -> None:
    pixels = np.arange(3 * 2 * 2 * 1, dtype=np.uint8).reshape(3, 2, 2, 1)
    decoded = DecodedItems(["a", "b", "c"], pixels)
    assert decoded.pixels_of(["a", "b", "c"]) is pixels
    assert np.array_equal(decoded.pixels_of(["c", "a"]), pixels[[2, 0]])
    with pytest.raises(LookupError):
        decoded.pixels_of(["a", "z"])
    with pytest.raises(ValueError):
        DecodedItems(["a"], pixels)
