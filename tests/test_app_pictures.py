"""Pictures as the demo shows them: sharp enlargements, any decodable mode, clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from simrec.app.pictures import display_png
from simrec.images import InvalidImageError

MAX_PIXELS = 40_000_000
# A deployment that allows TIFF uploads (the default allow-list leaves it out).
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _shown(payload: bytes, width: int = 140) -> Image.Image:
    shown = Image.open(io.BytesIO(display_png(payload, width, "upload", MAX_PIXELS, FORMATS)))
    assert shown.format == "PNG" and shown.mode in {"L", "LA", "RGB", "RGBA"}
    return shown


def test_small_image_is_enlarged_nearest_neighbour_without_blur() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    shown = _shown(_encoded(Image.fromarray(pixels), "PNG"))
    assert shown.size == (140, 140)  # a whole factor: 5
    # Every source pixel became a 5×5 block of exactly its value: no interpolated grey.
    assert np.array_equal(np.asarray(shown), np.kron(pixels, np.ones((5, 5), dtype=np.uint8)))


def test_large_photo_is_shrunk_to_the_width_keeping_its_shape() -> None:
    shown = _shown(_encoded(Image.new("RGB", (800, 400), "red"), "JPEG"))
    assert shown.size == (140, 70)


@pytest.mark.parametrize(
    ("image", "fmt"),
    [
        (Image.fromarray(np.arange(0, 60_000, 60, dtype=np.uint16).reshape(25, 40)), "PNG"),
        (Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"),
        (Image.fromarray(np.linspace(-1, 1, 1200, dtype=np.float32).reshape(30, 40)), "TIFF"),
        (Image.new("P", (40, 30), 3), "GIF"),
    ],
    ids=["16-bit-png", "cmyk-jpeg", "float-tiff", "palette-gif"],
)
def test_unusual_modes_become_a_browser_png(image: Image.Image, fmt: str) -> None:
    shown = _shown(_encoded(image, fmt))
    assert shown.width == 120  # 40 px enlarged 3×
    assert np.asarray(shown).std() > 0 or image.mode in {"CMYK", "P"}  # the range survived


def test_sixteen_bit_range_is_scaled_not_clipped() -> None:
    ramp = np.arange(0, 60_000, 60, dtype=np.uint16).reshape(25, 40)
    shown = np.asarray(_shown(_encoded(Image.fromarray(ramp), "PNG"), width=40))
    assert shown.min() == 0 and shown.max() == 255
    assert 100 < shown.mean() < 155  # an even ramp stays even (clipping would make it white)


def test_truncated_and_non_images_are_invalid_image_errors() -> None:
    jpeg = _encoded(Image.new("RGB", (64, 64), "blue"), "JPEG")
    with pytest.raises(InvalidImageError, match="upload"):
        display_png(jpeg[: len(jpeg) // 2], 140, "upload", MAX_PIXELS, FORMATS)
    with pytest.raises(InvalidImageError, match="not a readable image"):
        display_png(b"a shopping list", 140, "upload", MAX_PIXELS, FORMATS)
