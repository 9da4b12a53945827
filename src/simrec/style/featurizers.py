"""Pluggable, batch-first style featurizers: blocks, and weighted combinations of blocks.

A block turns a batch of items (pixels and, where known, product text) into unit-length rows:

- `colour`: the √-normalised joint RGB histogram (optionally of foreground pixels only);
  Hellinger geometry, nothing fitted. It is the baseline and can also *be* the model.
- `text`: TF-IDF of the product text (name, type, colour, description), vocabulary and IDF
  fitted on training items only; an item without text gets a zero row.
- `gram`: Gram vectors of a backbone's layers (`StyleFeaturizer`: PCA per layer, fitted).
- `pooled`: foreground-averaged activations of a backbone's layers, √-damped, centred on the
  training items, one unit block per layer.

Work is split so experiments can cache it: `raw(pixels, texts)` is the expensive, unfitted
part (backbone passes, histograms, the text itself); `fit(raw)` and `transform(raw)` are cheap.
A `CombinedFeaturizer` concatenates blocks scaled by √weight and L2-normalises the result, so
its cosine similarity is the weighted mean of the blocks' cosines.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import joblib
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from simrec.config import StyleBlockSettings, StyleSettings
from simrec.progress import progress
from simrec.style.backbone import build_backbone, load_backbone, save_backbone
from simrec.style.colour import colour_codes, colour_histograms
from simrec.style.features import StyleFeaturizer, l2_normalise
from simrec.style.gram import foreground_mask, resize_mask

BLOCKS_FILE = "blocks.json"


class Block(ABC):
    """One kind of style evidence. Subclasses set `kind`."""

    kind: str

    def __init__(self, name: str, spec: StyleBlockSettings, style: StyleSettings):
        self.name = name
        self.spec = spec
        self.style = style

    @abstractmethod
    def raw(self, pixels: np.ndarray, texts: list[str] | None) -> np.ndarray:
        """Unfitted features of a batch (rows in input order)."""

    def fit(self, raw: np.ndarray) -> Block:
        """Learn from training rows only (default: nothing to learn)."""
        return self

    @abstractmethod
    def transform(self, raw: np.ndarray) -> np.ndarray:
        """(N, D) unit rows (zero rows where the block has no evidence)."""

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)

    def load_state(self, folder: Path) -> None:  # noqa: B027 (nothing to restore by default)
        """Restore what `fit` learned from `save`'s folder."""


class ColourBlock(Block):
    kind = "colour"

    def raw(self, pixels: np.ndarray, texts: list[str] | None) -> np.ndarray:
        histograms = colour_histograms(pixels, self.style.colour_bins)
        if not self.spec.mask_background:
            return histograms
        # Re-count over foreground pixels: studio-white background says nothing of style.
        mask = foreground_mask(pixels, self.style.background_threshold).astype(bool)
        bins = self.style.colour_bins
        out = np.zeros_like(histograms)
        codes = colour_codes(pixels, bins)
        for row in range(len(pixels)):
            chosen = codes[row][mask[row]] if mask[row].any() else codes[row].ravel()
            out[row] = np.bincount(chosen, minlength=bins**3)
        return np.sqrt(out / np.maximum(out.sum(axis=1, keepdims=True), 1.0))

    def transform(self, raw: np.ndarray) -> np.ndarray:
        return l2_normalise(np.asarray(raw, dtype=np.float32))


class TextBlock(Block):
    kind = "text"
    STATE_FILE = "tfidf.joblib"

    def __init__(self, name: str, spec: StyleBlockSettings, style: StyleSettings):
        super().__init__(name, spec, style)
        self.vectorizer: TfidfVectorizer | None = None

    def raw(self, pixels: np.ndarray, texts: list[str] | None) -> np.ndarray:
        count = len(pixels) if texts is None else len(texts)
        return np.asarray(list(texts) if texts is not None else [""] * count, dtype=object)

    def fit(self, raw: np.ndarray) -> TextBlock:
        self.vectorizer = TfidfVectorizer(
            lowercase=True,
            strip_accents="unicode",
            ngram_range=(1, self.spec.ngram_max),
            min_df=self.spec.min_df,
            sublinear_tf=True,
        ).fit([str(text) for text in raw])
        return self

    def transform(self, raw: np.ndarray) -> np.ndarray:
        if self.vectorizer is None:
            raise ValueError(f"text block {self.name!r} is not fitted")
        matrix = self.vectorizer.transform([str(text) for text in raw])
        return l2_normalise(matrix.toarray())

    def save(self, folder: Path) -> None:
        super().save(folder)
        joblib.dump(self.vectorizer, folder / self.STATE_FILE)

    def load_state(self, folder: Path) -> None:
        self.vectorizer = joblib.load(folder / self.STATE_FILE)


def _backbone_settings(spec: StyleBlockSettings, style: StyleSettings) -> StyleSettings:
    return style.model_copy(
        update={
            "backbone": spec.backbone,
            "weights": spec.weights,
            "layers": list(spec.layers),
            "layer_weights": [1.0] * len(spec.layers),
            "weights_path": spec.weights_path,
        }
    )


class GramBlock(Block):
    kind = "gram"
    FOLDER = "gram"

    def __init__(self, name: str, spec: StyleBlockSettings, style: StyleSettings):
        super().__init__(name, spec, style)
        self._featurizer: StyleFeaturizer | None = None

    @property
    def featurizer(self) -> StyleFeaturizer:
        if self._featurizer is None:
            self._featurizer = StyleFeaturizer(_backbone_settings(self.spec, self.style))
        return self._featurizer

    def _widths(self) -> list[int]:
        channels = [int(out.shape[-1]) for out in self.featurizer.backbone.model.outputs]
        return [c * (c + 1) // 2 for c in channels]

    def raw(self, pixels: np.ndarray, texts: list[str] | None) -> np.ndarray:
        return np.concatenate(self.featurizer.gram_features(pixels), axis=1)

    def _split(self, raw: np.ndarray) -> list[np.ndarray]:
        edges = np.cumsum(self._widths())[:-1]
        return np.split(np.asarray(raw, dtype=np.float32), edges, axis=1)

    def fit(self, raw: np.ndarray) -> GramBlock:
        self.featurizer.fit_grams(self._split(raw))  # the Gram maths lives in StyleFeaturizer
        return self

    def transform(self, raw: np.ndarray) -> np.ndarray:
        return self.featurizer.project(self._split(raw))

    def save(self, folder: Path) -> None:
        super().save(folder)
        self.featurizer.save(folder / self.FOLDER)

    def load_state(self, folder: Path) -> None:
        self._featurizer = StyleFeaturizer.load(folder / self.FOLDER)


class PooledBlock(Block):
    kind = "pooled"
    BACKBONE = "backbone.keras"
    STATE_FILE = "pooled.npz"

    def __init__(self, name: str, spec: StyleBlockSettings, style: StyleSettings):
        super().__init__(name, spec, style)
        self._backbone = None
        self.means: list[np.ndarray] = []

    @property
    def backbone(self):
        if self._backbone is None:
            self._backbone = build_backbone(_backbone_settings(self.spec, self.style))
        return self._backbone

    def raw(self, pixels: np.ndarray, texts: list[str] | None) -> np.ndarray:
        chunks = []
        batch = self.style.batch_size
        starts = range(0, len(pixels), batch)
        for start in progress(
            starts, desc="pooled features", unit="batch", leave=False, disable=len(starts) <= 1
        ):
            block = np.asarray(pixels[start : start + batch])
            mask = foreground_mask(block, self.style.background_threshold)
            parts = []
            for maps in self.backbone.feature_maps(block, batch):
                weights = resize_mask(mask, maps.shape[1], maps.shape[2])
                totals = weights.sum(axis=(1, 2))
                weights = np.where(totals[:, None, None] > 0, weights, 1.0)
                pooled = (maps * weights[..., None]).sum(axis=(1, 2))
                parts.append(pooled / weights.sum(axis=(1, 2))[:, None])
            chunks.append(np.concatenate(parts, axis=1))
        return np.sqrt(np.maximum(np.concatenate(chunks), 0.0)).astype(np.float32)

    def _split(self, raw: np.ndarray) -> list[np.ndarray]:
        channels = [int(out.shape[-1]) for out in self.backbone.model.outputs]
        return np.split(np.asarray(raw, dtype=np.float32), np.cumsum(channels)[:-1], axis=1)

    def fit(self, raw: np.ndarray) -> PooledBlock:
        self.means = [l2_normalise(layer).mean(axis=0) for layer in self._split(raw)]
        return self

    def transform(self, raw: np.ndarray) -> np.ndarray:
        if not self.means:
            raise ValueError(f"pooled block {self.name!r} is not fitted")
        parts = [
            l2_normalise(l2_normalise(layer) - mean)
            for layer, mean in zip(self._split(raw), self.means, strict=True)
        ]
        return l2_normalise(np.concatenate(parts, axis=1))

    def save(self, folder: Path) -> None:
        super().save(folder)
        meta = save_backbone(self.backbone, folder / self.BACKBONE)
        (folder / "backbone.json").write_text(json.dumps(meta))
        np.savez(folder / self.STATE_FILE, *self.means)

    def load_state(self, folder: Path) -> None:
        meta = json.loads((folder / "backbone.json").read_text())
        self._backbone = load_backbone(folder / self.BACKBONE, meta)
        with np.load(folder / self.STATE_FILE) as arrays:
            self.means = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


BLOCK_KINDS: dict[str, type[Block]] = {
    kind.kind: kind for kind in (ColourBlock, TextBlock, GramBlock, PooledBlock)
}


def make_block(name: str, style: StyleSettings) -> Block:
    if style.select is None:
        raise ValueError("the style.select section (conf/simrec.yaml) is missing")
    blocks = style.select.blocks
    if name not in blocks:
        raise ValueError(f"unknown style block {name!r}; style.select.blocks has {sorted(blocks)}")
    spec = blocks[name]
    return BLOCK_KINDS[spec.kind](name, spec, style)


class CombinedFeaturizer:
    """Blocks with weights: pixels (+ text) → one unit vector per item, batch first."""

    def __init__(self, blocks: list[Block], weights: list[float], style: StyleSettings):
        if len(blocks) != len(weights) or not blocks:
            raise ValueError("a combination needs one weight per block, and a block")
        self.blocks = blocks
        self.weights = [float(w) for w in weights]
        self.style = style

    @property
    def name(self) -> str:
        return "+".join(block.name for block in self.blocks)

    @property
    def image_size(self) -> int:
        return self.style.image_size

    @property
    def weights_source(self) -> str:
        sources = [
            block.backbone.weights_source if isinstance(block, PooledBlock)
            else block.featurizer.backbone.weights_source if isinstance(block, GramBlock)
            else block.kind
            for block in self.blocks
        ]  # fmt: skip
        return ", ".join(sources)

    def raw(self, pixels: np.ndarray, texts: list[str] | None = None) -> list[np.ndarray]:
        return [block.raw(pixels, texts) for block in self.blocks]

    def fit(self, raws: list[np.ndarray]) -> CombinedFeaturizer:
        for block, raw in zip(self.blocks, raws, strict=True):
            block.fit(raw)
        return self

    def from_raw(self, raws: list[np.ndarray]) -> np.ndarray:
        return combine(
            [block.transform(raw) for block, raw in zip(self.blocks, raws, strict=True)],
            self.weights,
        )

    def transform(self, pixels: np.ndarray, texts: list[str] | None = None) -> np.ndarray:
        """A batch of (N, S, S, 3) pixels (and their texts, if known) → (N, D) unit rows."""
        return self.from_raw(self.raw(pixels, texts))

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for block in self.blocks:
            block.save(folder / block.name)
        meta = {
            "blocks": [block.name for block in self.blocks],
            "weights": self.weights,
            "style": self.style.model_dump(mode="json"),
        }
        (folder / BLOCKS_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path) -> CombinedFeaturizer:
        folder = Path(folder)
        meta = json.loads((folder / BLOCKS_FILE).read_text())
        style = StyleSettings.model_validate(meta["style"])
        blocks = [make_block(name, style) for name in meta["blocks"]]
        for block in blocks:
            block.load_state(folder / block.name)
        return cls(blocks, meta["weights"], style)


def combine(parts: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Unit blocks scaled by √weight, concatenated, L2-normalised."""
    scaled = [
        np.asarray(part, np.float32) * np.float32(np.sqrt(w))
        for part, w in zip(parts, weights, strict=True)
    ]
    return l2_normalise(np.concatenate(scaled, axis=1))


def is_combined(folder: Path) -> bool:
    return (Path(folder) / BLOCKS_FILE).is_file()
