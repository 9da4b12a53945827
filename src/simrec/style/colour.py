"""Colour-histogram baseline: a joint RGB histogram (bins³ cells) per image.

Vectors are the square roots of the normalised histograms, so L2 distance between them is the
Hellinger distance between the colour distributions.
"""

from __future__ import annotations

import numpy as np


def colour_histograms(pixels: np.ndarray, bins: int = 8) -> np.ndarray:
    """(N, H, W, 3) uint8 → (N, bins³) float32 √-normalised joint RGB histograms."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"expected RGB pixels (N, H, W, 3), got shape {pixels.shape}")
    codes = colour_codes(pixels, bins).reshape(len(pixels), -1)
    histograms = np.zeros((len(pixels), bins**3), dtype=np.float32)
    for row, row_codes in enumerate(codes):
        histograms[row] = np.bincount(row_codes, minlength=bins**3)
    histograms /= np.maximum(histograms.sum(axis=1, keepdims=True), 1.0)
    return np.sqrt(histograms)


def colour_codes(pixels: np.ndarray, bins: int) -> np.ndarray:
    """(N, H, W, 3) uint8 → (N, H, W) joint cell index 0 … bins³-1 of every pixel, in 32-bit
    integers (64-bit copies of a 2,000-image catalog at 128 px cost ~1 GB and seconds)."""
    if not 1 <= bins <= 256:
        raise ValueError(f"colour bins must be 1 … 256, got {bins}")
    cells = (np.asarray(pixels).astype(np.int32) * bins) // 256  # 0 … bins-1 per channel
    return (cells[..., 0] * bins + cells[..., 1]) * bins + cells[..., 2]
