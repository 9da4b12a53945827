"""Image bytes in and out: validation with clear errors, PNG encoding, decoding to arrays."""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000


class InvalidImageError(ValueError):
    """Bytes that are not a readable image (or too large to read safely)."""


def sha256_hex(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def open_image(
    payload: bytes, source: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode `payload` fully, or raise InvalidImageError naming `source`.

    The pixel count is checked from the header before any pixel is decoded, so a
    decompression bomb is refused without allocating it.
    """
    if not payload:
        raise InvalidImageError(f"{source}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(payload))
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidImageError(
                    f"{source}: {width}x{height} pixels exceeds the limit of {max_pixels} pixels"
                )
            image.load()
    except InvalidImageError:
        raise
    except UnidentifiedImageError as error:
        # PIL's own message only names the BytesIO object it was given.
        raise InvalidImageError(f"{source}: not a readable image (unknown format)") from error
    except (
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as error:
        raise InvalidImageError(f"{source}: not a readable image ({error})") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidImageError(f"{source}: corrupt or truncated image ({error})") from error
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
    payloads: Iterable[bytes], size: int, channels: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Image bytes → uint8 array (N, size, size, channels); pixels are *not* scaled here."""
    arrays = [
        to_array(open_image(payload, f"image {position}", max_pixels), size, channels)
        for position, payload in enumerate(payloads)
    ]
    if not arrays:
        return np.zeros((0, size, size, channels), dtype=np.uint8)
    return np.stack(arrays)
