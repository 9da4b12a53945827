"""A style bundle: everything needed to answer queries, saved as one folder (and logged to
MLflow as one artifact): the featurizer (backbone + PCAs), an optional learned head, the
per-category indexes, the indexed items and their vectors, and where they came from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from simrec.style.features import StyleFeaturizer
from simrec.style.indexes import CategoryIndexes

FEATURIZER_DIR = "featurizer"
HEAD_FILE = "head.keras"
INDEXES_DIR = "indexes"
ITEMS_FILE = "items.parquet"
VECTORS_FILE = "vectors.npy"
BUNDLE_FILE = "bundle.json"


@dataclass
class StyleEncoder:
    """Pixels → the vectors the indexes hold: style vectors, or a learned head's embedding."""

    featurizer: StyleFeaturizer  # or a CombinedFeaturizer: both map a batch of pixels to rows
    head: object | None = None  # tf.keras.Model

    @property
    def image_size(self) -> int:
        return self.featurizer.image_size

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        return self.embed(self.featurizer.transform(pixels))

    def embed(self, style_vectors: np.ndarray) -> np.ndarray:
        """Style vectors → index vectors (identity without a head)."""
        if self.head is None:
            return np.asarray(style_vectors, dtype=np.float32)
        if len(style_vectors) == 0:
            return np.zeros((0, self.head.output_shape[-1]), dtype=np.float32)
        return np.asarray(self.head.predict(style_vectors, batch_size=512, verbose=0), np.float32)


@dataclass
class StyleBundle:
    encoder: StyleEncoder
    indexes: CategoryIndexes
    items: pd.DataFrame  # id, category, name, sha256 — in the order of `vectors`
    vectors: np.ndarray
    meta: dict = field(default_factory=dict)

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.featurizer.save(folder / FEATURIZER_DIR)
        if self.encoder.head is not None:
            self.encoder.head.save(folder / HEAD_FILE)
        self.indexes.save(folder / INDEXES_DIR)
        self.items.to_parquet(folder / ITEMS_FILE, index=False)
        np.save(folder / VECTORS_FILE, self.vectors)
        (folder / BUNDLE_FILE).write_text(json.dumps(self.meta, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, folder: Path) -> StyleBundle:
        folder = Path(folder)
        head = None
        if (folder / HEAD_FILE).exists():
            import tensorflow as tf
            from tensorflow_similarity.layers import MetricEmbedding

            head = tf.keras.models.load_model(
                folder / HEAD_FILE,
                compile=False,
                custom_objects={"MetricEmbedding": MetricEmbedding},
            )
        items = pd.read_parquet(folder / ITEMS_FILE)
        vectors = np.load(folder / VECTORS_FILE)
        if len(items) != len(vectors):
            raise ValueError(f"{folder}: {len(items)} items but {len(vectors)} vectors")
        from simrec.style.featurizers import CombinedFeaturizer, is_combined

        featurizer_dir = folder / FEATURIZER_DIR
        featurizer = (
            CombinedFeaturizer.load(featurizer_dir)
            if is_combined(featurizer_dir)
            else StyleFeaturizer.load(featurizer_dir)
        )
        return cls(
            encoder=StyleEncoder(featurizer, head),
            indexes=CategoryIndexes.load(folder / INDEXES_DIR),
            items=items,
            vectors=vectors,
            meta=json.loads((folder / BUNDLE_FILE).read_text()),
        )
