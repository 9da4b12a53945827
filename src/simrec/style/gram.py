"""Gram matrices of CNN feature maps as pure numpy functions (Gatys et al. style statistics).

A feature map (H, W, C) becomes the channel-correlation matrix G = Fᵀ F / P over its P
positions; optionally only over foreground positions (a mask), so the white studio background
of product photos does not dominate every item's statistics. G is symmetric: only the upper
triangle (diagonal included, C·(C+1)/2 values) is kept.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Downsample a (N, H0, W0) weight mask to (N, height, width) by block averaging.

    The CNN halves its resolution at each pooling, so the mask for a layer is the share of
    foreground input pixels under each of its positions (nearest-block when sizes don't divide).
    """
    mask = np.asarray(mask, dtype=np.float32)
    count, source_h, source_w = mask.shape
    if (source_h, source_w) == (height, width):
        return mask
    if source_h % height == 0 and source_w % width == 0:
        block_h, block_w = source_h // height, source_w // width
        return mask.reshape(count, height, block_h, width, block_w).mean(axis=(2, 4))
    rows = (np.arange(height) * source_h // height).astype(int)
    cols = (np.arange(width) * source_w // width).astype(int)
    return mask[:, rows][:, :, cols]


def gram_matrices(feature_maps: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W, C) feature maps → (N, C, C) Gram matrices, averaged over (weighted) positions.

    `mask` (N, H, W) weights each position (0 = ignore); where an image has no weight at all
    the plain average over every position is used instead of dividing by zero.
    """
    maps = np.asarray(feature_maps, dtype=np.float32)
    if maps.ndim != 4:
        raise ValueError(f"expected feature maps (N, H, W, C), got shape {maps.shape}")
    count, height, width, channels = maps.shape
    flat = maps.reshape(count, height * width, channels)
    if mask is None:
        return _products(flat, flat) / float(height * width)
    weights = np.asarray(mask, dtype=np.float32).reshape(count, height * width)
    totals = weights.sum(axis=1)
    weights = np.where(totals[:, None] > 0, weights, 1.0)
    totals = weights.sum(axis=1)
    weighted = flat * weights[:, :, None]
    return _products(weighted, flat) / totals[:, None, None]


def _products(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """(N, P, C) × (N, P, C) → (N, C, C): leftᵢᵀ rightᵢ per image, one single-threaded BLAS
    call each. A stacked `matmul` of the transposed view, or a threaded BLAS on products this
    small, ran 5-40× slower (measured on 2 cores: most of the style step's time)."""
    out = np.empty((len(left), left.shape[2], right.shape[2]), dtype=np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        for position in range(len(left)):
            np.dot(left[position].T, right[position], out=out[position])
    return out


def upper_triangle(grams: np.ndarray) -> np.ndarray:
    """(N, C, C) symmetric matrices → (N, C·(C+1)/2) upper triangles, row by row."""
    grams = np.asarray(grams)
    channels = grams.shape[-1]
    rows, cols = np.triu_indices(channels)
    return grams[:, rows, cols]


def gram_features(feature_maps: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Feature maps (and an optional input-resolution mask) → flattened Gram upper triangles."""
    maps = np.asarray(feature_maps)
    layer_mask = None if mask is None else resize_mask(mask, maps.shape[1], maps.shape[2])
    return upper_triangle(gram_matrices(maps, layer_mask))


def foreground_mask(pixels: np.ndarray, threshold: int) -> np.ndarray:
    """(N, H, W, 3) uint8 → (N, H, W) float mask: 0 where every channel is ≥ `threshold`
    (studio-white background), 1 elsewhere."""
    pixels = np.asarray(pixels)
    return (pixels.min(axis=-1) < threshold).astype(np.float32)
