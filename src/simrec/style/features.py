"""Style vectors: backbone feature maps → Gram upper triangles (signed power `gram_power`) →
PCA per layer (fitted on the catalog) → per-layer scaling by layer weight → concatenated,
L2-normalised vector.

`StyleFeaturizer` is the thin stateful wrapper (backbone + fitted PCAs, saved and loaded
together); the maths lives in `gram.py` and `LayerPCA`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from simrec.config import StyleSettings
from simrec.progress import progress
from simrec.style.backbone import Backbone, build_backbone, load_backbone, save_backbone
from simrec.style.gram import foreground_mask, gram_features

BACKBONE_FILE = "backbone.keras"
PCA_FILE = "pca.npz"
META_FILE = "featurizer.json"


@dataclass
class LayerPCA:
    """A fitted PCA projection; outputs are scaled so the layer's total variance on the fitting
    data is 1, then by √weight, so layer weights (not channel counts) set each layer's share."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D)
    scale: float

    @classmethod
    def fit(cls, features: np.ndarray, dims: int, weight: float, seed: int) -> LayerPCA:
        features = np.asarray(features, dtype=np.float32)
        dims = min(dims, features.shape[0], features.shape[1])
        solver = "full" if min(features.shape) <= 4 * dims else "randomized"
        pca = PCA(n_components=dims, svd_solver=solver, random_state=seed).fit(features)
        projected = (features - pca.mean_) @ pca.components_.T
        total_std = float(np.sqrt(projected.var(axis=0).sum())) or 1.0
        return cls(
            mean=pca.mean_.astype(np.float32),
            components=pca.components_.astype(np.float32),
            scale=float(np.sqrt(weight)) / total_std,
        )

    def transform(self, features: np.ndarray) -> np.ndarray:
        centred = np.asarray(features, dtype=np.float32) - self.mean
        return (centred @ self.components.T) * np.float32(self.scale)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class StyleFeaturizer:
    """Pixels → style vectors. `fit` learns the per-layer PCAs from catalog pixels."""

    show_progress = True  # a tqdm bar over batches; the served model turns it off

    def __init__(self, settings: StyleSettings, backbone: Backbone | None = None):
        if len(settings.layer_weights) != len(settings.layers):
            raise ValueError(
                f"style.layer_weights has {len(settings.layer_weights)} entries for "
                f"{len(settings.layers)} layers"
            )
        self.settings = settings
        self.backbone = backbone or build_backbone(settings)
        self.pcas: list[LayerPCA] = []

    @property
    def image_size(self) -> int:
        return self.backbone.image_size

    @property
    def dim(self) -> int:
        return sum(len(pca.components) for pca in self.pcas)

    def gram_features(self, pixels: np.ndarray) -> list[np.ndarray]:
        """One (N, C·(C+1)/2) array of Gram upper triangles per layer, computed batch by batch
        so only one batch of feature maps is ever held."""
        per_layer: list[list[np.ndarray]] = [[] for _ in self.backbone.layers]
        batch = self.settings.batch_size
        starts = range(0, len(pixels), batch)
        for start in progress(
            starts,
            desc="style features",
            unit="batch",
            leave=False,
            disable=not self.show_progress or len(starts) <= 1,
        ):
            block = np.asarray(pixels[start : start + batch])
            mask = (
                foreground_mask(block, self.settings.background_threshold)
                if self.settings.mask_background and block.shape[-1] == 3
                else None
            )
            for position, maps in enumerate(self.backbone.feature_maps(block, batch)):
                grams = gram_features(maps, mask)
                if self.settings.gram_power != 1.0:
                    grams = np.sign(grams) * np.abs(grams) ** self.settings.gram_power
                per_layer[position].append(grams)
        return [np.concatenate(chunks) for chunks in per_layer]

    def fit(self, pixels: np.ndarray) -> StyleFeaturizer:
        self.fit_transform(pixels)
        return self

    def fit_transform(self, pixels: np.ndarray) -> np.ndarray:
        grams = self.gram_features(pixels)
        return self.fit_grams(grams).project(grams)

    def fit_grams(self, grams: list[np.ndarray]) -> StyleFeaturizer:
        """Fit the per-layer PCAs on Gram features already computed (`gram_features`)."""
        self.pcas = [
            LayerPCA.fit(layer, self.settings.pca_dims, weight, self.settings.seed)
            for layer, weight in zip(grams, self.settings.layer_weights, strict=True)
        ]
        return self

    def transform(self, pixels: np.ndarray) -> np.ndarray:
        return self.project(self.gram_features(pixels))

    def project(self, grams: list[np.ndarray]) -> np.ndarray:
        """Gram features (one array per layer) → style vectors, through the fitted PCAs."""
        if not self.pcas:
            raise ValueError("the featurizer is not fitted: call fit() or load() first")
        parts = [pca.transform(layer) for pca, layer in zip(self.pcas, grams, strict=True)]
        return l2_normalise(np.concatenate(parts, axis=1))

    # -- persistence ------------------------------------------------------------------------
    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        backbone_meta = save_backbone(self.backbone, folder / BACKBONE_FILE)
        arrays = {}
        for position, pca in enumerate(self.pcas):
            arrays[f"mean_{position}"] = pca.mean
            arrays[f"components_{position}"] = pca.components
            arrays[f"scale_{position}"] = np.float32(pca.scale)
        np.savez(folder / PCA_FILE, **arrays)
        meta = {
            "settings": self.settings.model_dump(mode="json"),
            "backbone": backbone_meta,
            "dim": self.dim,
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path) -> StyleFeaturizer:
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        settings = StyleSettings.model_validate(meta["settings"])
        featurizer = cls(settings, load_backbone(folder / BACKBONE_FILE, meta["backbone"]))
        with np.load(folder / PCA_FILE) as arrays:
            featurizer.pcas = [
                LayerPCA(
                    arrays[f"mean_{position}"],
                    arrays[f"components_{position}"],
                    float(arrays[f"scale_{position}"]),
                )
                for position in range(len(settings.layers))
            ]
        if featurizer.dim != meta["dim"]:
            raise ValueError(f"{folder}: PCA dims {featurizer.dim} != recorded {meta['dim']}")
        return featurizer
