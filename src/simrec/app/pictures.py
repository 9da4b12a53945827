"""Pictures as the page shows them: any decodable image → an 8-bit PNG of a readable width,
handed to `st.image` as a `data:` URL.

Small images (Fashion-MNIST's 28×28) are enlarged by a whole factor with nearest-neighbour, so
they stay sharp instead of being blurred by the browser; large photos are shrunk. Modes a browser
or Streamlit cannot show (16-bit, float, CMYK, palette) become RGB/L first, so `st.image` only
ever sees a PNG this module wrote.

Why data URLs rather than bytes: `st.image(bytes)` stores each picture in Streamlit's media file
manager and the browser fetches `/media/<hash>`; a rerun that starts while the browser is still
fetching (a click soon after another) drops the previous run's files, and those pictures stay
broken with a 404 (streamlit/streamlit#1294, #4825; seen here in the browser test). A data URL
travels inside the page update itself, so a picture that is on the page has its bytes.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from simrec.images import InvalidImageError, open_image

# Modes Pillow can write to PNG as they are; everything else is converted to RGB first.
_PNG_MODES = frozenset({"L", "LA", "RGB", "RGBA"})


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit and float images scaled to 0–255 by their own range; others via Pillow's convert."""
    if image.mode in _PNG_MODES:
        return image
    if image.mode.startswith(("I", "F")):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        span = high - low or 1.0
        scaled = np.nan_to_num((values - low) / span * 255.0)
        return Image.fromarray(scaled.clip(0, 255).astype(np.uint8), mode="L")
    return image.convert("RGBA" if "transparency" in image.info else "RGB")


def resized(image: Image.Image, width: int) -> Image.Image:
    """`image` at about `width` pixels wide: enlarged by a whole factor (nearest-neighbour) or
    shrunk (Lanczos); the aspect ratio is kept."""
    if image.width < width:
        factor = max(1, width // image.width)
        return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    if image.width > width:
        height = max(1, round(image.height * width / image.width))
        return image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def display_png(
    payload: bytes,
    width: int,
    source: str,
    max_pixels: int,
    formats: Sequence[str],
) -> bytes:
    """PNG bytes of `payload` ready for `st.image`; raises InvalidImageError with `source`.
    Only `formats` are decoded (the served model's allow-list for uploads)."""
    image = open_image(payload, source, max_pixels, formats)
    try:
        shown = resized(_eight_bit(image), width)
        buffer = io.BytesIO()
        shown.save(buffer, format="PNG")
    except (OSError, ValueError, TypeError) as error:
        raise InvalidImageError(f"{source}: cannot be shown ({error})") from error
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    """`png` as a `data:image/png;base64,…` URL (st.image shows it without the media manager)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
