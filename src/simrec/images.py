"""Image bytes in and out: the one guarded decoder (formats, pixel ceiling, frames), PNG
encoding, decoding to arrays.

Every place that reads untrusted image bytes (ingest, packaging, re-index, the served models,
the app) goes through `open_image`, so a hostile file is refused the same way everywhere.
"""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000
# No allow-list is written here: a caller that names none gets serving.image_formats of
# conf/simrec.yaml (`configured_formats`), where the defaults live.

# Pillow's own bomb check reads the module-global MAX_IMAGE_PIXELS, and some containers (an
# ICO holding a PNG) decode inside Image.open. The global is set to the caller's limit for the
# duration of the open, under this lock, so that check already uses the configured ceiling.
_OPEN_LOCK = threading.Lock()


class InvalidImageError(ValueError):
    """Bytes that are not a readable image (or too large to read safely)."""


class ImageTooLargeError(InvalidImageError):
    """An image with more pixels than the configured ceiling (refused before decoding)."""


def sha256_hex(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


@cache
def configured_formats() -> tuple[str, ...]:
    """serving.image_formats of conf/simrec.yaml: what a caller that names no formats gets.
    Containers that decode while *opening* (ICO, ICNS) or carry many decoders (TIFF) are
    left out there unless a config names them."""
    from simrec.config import configured_section

    return tuple(configured_section("serving").image_formats)


def _check_pixels(image: Image.Image, source: str, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{source}: {width}x{height} pixels exceeds the limit of {max_pixels} pixels"
        )


@contextmanager
def _decoding(source: str, max_pixels: int) -> Iterator[None]:
    """Pillow's refusals while opening or decoding, as simrec's errors naming `source`."""
    try:
        yield
    except UnidentifiedImageError:
        raise  # not a decoder's failure: the caller names the formats it tried
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(
            f"{source}: the image exceeds the limit of {max_pixels} pixels ({error})"
        ) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InvalidImageError(f"{source}: corrupt or truncated image ({error})") from error


def _open_header(
    payload: bytes, source: str, max_pixels: int, formats: Sequence[str] | None
) -> Image.Image:
    """Image.open under the configured ceiling; only the allowed formats are tried."""
    formats = tuple(formats) if formats is not None else configured_formats()
    if not payload:
        raise InvalidImageError(f"{source}: empty file")
    try:
        with _decoding(source, max_pixels), _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                image = Image.open(io.BytesIO(payload), formats=formats)
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except UnidentifiedImageError as error:
        # PIL's own message only names the BytesIO object it was given.
        raise InvalidImageError(
            f"{source}: not a readable image (not one of the accepted formats {list(formats)})"
        ) from error
    _check_pixels(image, source, max_pixels)
    return image


def image_pixels(
    payload: bytes,
    source: str = "image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] | None = None,
) -> int:
    """The pixel count of the first frame, read from the header without decoding pixels;
    InvalidImageError for what `open_image` would refuse before decoding."""
    width, height = _open_header(payload, source, max_pixels, formats).size
    return width * height


def open_image(
    payload: bytes,
    source: str = "image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] | None = None,
) -> Image.Image:
    """Decode the first frame of `payload`, or raise InvalidImageError naming `source`.

    Only `formats` are tried. The pixel count is checked before any pixel is decoded: by
    Pillow itself (its ceiling set to `max_pixels`) for containers that decode while opening,
    and from the header for the rest. Of a multi-frame image (GIF, APNG, WebP) only the first
    frame is decoded, and its size is checked again after decoding.
    """
    image = _open_header(payload, source, max_pixels, formats)
    with _decoding(source, max_pixels):
        image.load()
    _check_pixels(image, source, max_pixels)
    return image


def encode_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def to_array(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """Resize to `size`×`size` and convert to uint8 HxWxC (grayscale when channels == 1)."""
    mode = "L" if channels == 1 else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., None] if channels == 1 else pixels


def decode_batch(
    payloads: Iterable[bytes],
    size: int,
    channels: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] | None = None,
) -> np.ndarray:
    """Image bytes → uint8 array (N, size, size, channels); pixels are *not* scaled here."""
    arrays = [
        to_array(open_image(payload, f"image {position}", max_pixels, formats), size, channels)
        for position, payload in enumerate(payloads)
    ]
    if not arrays:
        return np.zeros((0, size, size, channels), dtype=np.uint8)
    return np.stack(arrays)
