"""The pluggable featurizers: batch-first, fitted on training rows only, saved and loaded with
the bundle; a query without text is matched on its pixels alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simrec.config import load_settings
from simrec.style.featurizers import CombinedFeaturizer, TextBlock, make_block

TEXTS = ["white oak chair", "black leather sofa", "white oak table", "red wool pillow"]


def _inputs(count: int = 4, size: int = 16):
    pixels = np.random.default_rng(0).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    return pixels, TEXTS[:count]


def test_a_combination_is_batch_first_and_survives_save_and_load(tmp_path: Path) -> None:
    style = load_settings(overrides={"style.image_size": 16}).style
    featurizer = CombinedFeaturizer(
        [make_block("colour_fg", style), make_block("text", style)], [1.0, 2.0], style
    )
    pixels, texts = _inputs()
    featurizer.fit(featurizer.raw(pixels, texts))
    batch = featurizer.transform(pixels, texts)
    one_by_one = np.concatenate(
        [featurizer.transform(pixels[i : i + 1], texts[i : i + 1]) for i in range(4)]
    )
    np.testing.assert_allclose(batch, one_by_one, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, rtol=1e-5)
    # Text carries "white oak": the chair's nearest item is the oak table.
    similarity = batch @ batch.T
    np.fill_diagonal(similarity, -1)
    assert similarity[0].argmax() == 2
    loaded = CombinedFeaturizer.load(featurizer.save(tmp_path / "featurizer"))
    np.testing.assert_allclose(loaded.transform(pixels, texts), batch, atol=1e-6)
    pixels_only = loaded.transform(pixels)  # an uploaded photo: no text, pixels alone
    colour = make_block("colour_fg", style)
    histograms = colour.transform(colour.raw(pixels, None))
    np.testing.assert_allclose(pixels_only[:, : histograms.shape[1]], histograms, atol=1e-6)
    assert not pixels_only[:, histograms.shape[1] :].any()


def test_text_vocabulary_comes_from_the_fitting_rows_only() -> None:
    style = load_settings().style
    block = make_block("text", style)
    assert isinstance(block, TextBlock)
    raw = block.raw(np.zeros((4, 1, 1, 3)), TEXTS * 1)
    block.spec = block.spec.model_copy(update={"min_df": 1})
    block.fit(raw[:2])  # chair and sofa only
    vocabulary = set(block.vectorizer.vocabulary_)
    assert "leather" in vocabulary and "table" not in vocabulary and "wool" not in vocabulary
    assert not block.transform(raw[3:])[0].any()  # nothing of the pillow's words was learned
