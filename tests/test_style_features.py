"""Gram matrices, masks, colour histograms and per-layer PCA on tiny inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from simrec.style.colour import colour_histograms
from simrec.style.features import LayerPCA, l2_normalise
from simrec.style.gram import (
    foreground_mask,
    gram_features,
    gram_matrices,
    resize_mask,
    upper_triangle,
)


def _maps() -> np.ndarray:
    """One 2×2 feature map with 2 channels: positions hold (1,0), (0,2), (1,1), (3,0)."""
    return np.array([[[[1, 0], [0, 2]], [[1, 1], [3, 0]]]], dtype=np.float32)


def test_gram_matrix_is_the_mean_outer_product_over_positions() -> None:
    # Σ f fᵀ = [[1+0+1+9, 0+0+1+0], [., 0+4+1+0]] = [[11, 1], [1, 5]], over 4 positions.
    expected = np.array([[[11, 1], [1, 5]]], dtype=np.float32) / 4
    np.testing.assert_allclose(gram_matrices(_maps()), expected)
    np.testing.assert_allclose(upper_triangle(expected), [[11 / 4, 1 / 4, 5 / 4]])
    np.testing.assert_allclose(gram_features(_maps()), [[11 / 4, 1 / 4, 5 / 4]])


def test_masked_gram_uses_foreground_positions_only() -> None:
    mask = np.array([[[1, 0], [0, 1]]], dtype=np.float32)  # keep (1,0) and (3,0)
    np.testing.assert_allclose(gram_matrices(_maps(), mask), [[[5, 0], [0, 0]]])
    # An all-background image falls back to every position instead of dividing by zero.
    np.testing.assert_allclose(gram_matrices(_maps(), np.zeros((1, 2, 2))), gram_matrices(_maps()))


def test_gram_shapes_and_symmetry() -> None:
    maps = np.random.default_rng(0).random((3, 8, 8, 5)).astype(np.float32)
    grams = gram_matrices(maps)
    assert grams.shape == (3, 5, 5)
    np.testing.assert_allclose(grams, grams.transpose(0, 2, 1), rtol=1e-6)
    assert gram_features(maps, np.ones((3, 16, 16))).shape == (3, 5 * 6 // 2)


def test_mask_is_block_averaged_down_to_the_layer_resolution() -> None:
    mask = np.array([[[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]], np.float32)
    np.testing.assert_allclose(resize_mask(mask, 2, 2), [[[0.75, 0], [0, 1]]])


def test_foreground_mask_drops_studio_white_only() -> None:
    pixels = np.array([[[[255, 255, 255], [250, 245, 241]], [[250, 10, 250], [0, 0, 0]]]])
    np.testing.assert_array_equal(foreground_mask(pixels, 240), [[[0, 0], [1, 1]]])


def test_colour_histogram_counts_joint_rgb_cells() -> None:
    pixels = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    pixels[0, 0, 0] = (255, 255, 255)  # cell (7,7,7) = 511
    pixels[0, 0, 1] = (255, 0, 0)  # cell (7,0,0) = 448
    histograms = colour_histograms(pixels, bins=8)
    assert histograms.shape == (1, 512)
    # √ of the shares: black 2/4, white 1/4, red 1/4.
    np.testing.assert_allclose(histograms[0, [0, 511, 448]], np.sqrt([0.5, 0.25, 0.25]))
    assert np.count_nonzero(histograms) == 3
    np.testing.assert_allclose((histograms**2).sum(), 1.0, rtol=1e-6)


def test_layer_pca_recovers_a_line_and_scales_to_the_layer_weight() -> None:
    along = np.linspace(-2, 2, 9, dtype=np.float32)
    direction = np.array([3.0, 4.0], dtype=np.float32) / 5
    features = along[:, None] * direction + np.array([1.0, 1.0], dtype=np.float32)
    pca = LayerPCA.fit(features, dims=1, weight=4.0, seed=0)
    assert pca.components.shape == (1, 2)
    np.testing.assert_allclose(np.abs(pca.components[0]), [0.6, 0.8], atol=1e-5)
    np.testing.assert_allclose(pca.mean, [1.0, 1.0], atol=1e-6)
    projected = pca.transform(features)
    assert projected.shape == (9, 1)
    # Unit total variance times √weight: the projected variance equals the weight.
    np.testing.assert_allclose(projected.var(), 4.0, rtol=1e-4)
    np.testing.assert_allclose(np.abs(projected[:, 0]), np.abs(along) * 2 / along.std(), rtol=1e-4)


def test_pca_dims_never_exceed_the_data() -> None:
    features = np.random.default_rng(1).random((5, 20)).astype(np.float32)
    assert LayerPCA.fit(features, dims=64, weight=1.0, seed=0).components.shape == (5, 20)


def test_l2_normalise_gives_unit_rows() -> None:
    vectors = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(vectors, [[0.6, 0.8], [0.0, 0.0]])


@pytest.mark.parametrize("bins", [4, 8])
def test_colour_histogram_rejects_grayscale(bins: int) -> None:
    with pytest.raises(ValueError, match="RGB"):
        colour_histograms(np.zeros((1, 2, 2, 1), dtype=np.uint8), bins)
