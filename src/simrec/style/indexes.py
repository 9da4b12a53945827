"""One faiss index per category over style vectors, saved and loaded as one folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from simrec.config import IndexSettings
from simrec.index.faiss_index import EmbeddingIndex, build_index

CATEGORIES_FILE = "categories.json"


def index_settings(metric: str) -> IndexSettings:
    """Exact search: `l2` Euclidean; `cosine` = inner product on L2-normalised vectors."""
    return IndexSettings(kind="flat", metric="ip" if metric == "cosine" else "l2")


class CategoryIndexes:
    """category -> EmbeddingIndex; vectors are searched per category, never across them."""

    def __init__(self, metric: str, indexes: dict[str, EmbeddingIndex] | None = None):
        self.metric = metric
        self.indexes: dict[str, EmbeddingIndex] = dict(indexes or {})

    @classmethod
    def build(
        cls, item_ids: np.ndarray, categories: np.ndarray, vectors: np.ndarray, metric: str
    ) -> CategoryIndexes:
        vectors = np.asarray(vectors, dtype=np.float32)
        if metric == "cosine":
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        categories = np.asarray(categories, dtype=object)
        indexes = {
            str(category): build_index(
                list(np.asarray(item_ids, dtype=object)[categories == category]),
                vectors[categories == category],
                index_settings(metric),
            )
            for category in sorted(set(categories.tolist()))
        }
        return cls(metric, indexes)

    @property
    def categories(self) -> list[str]:
        return sorted(self.indexes)

    def __len__(self) -> int:
        return sum(len(index) for index in self.indexes.values())

    def search(self, vectors: np.ndarray, category: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The n nearest items of `category` per query: ids and distances, both (Q, ≤n)."""
        if category not in self.indexes:
            raise KeyError(f"no index for category {category!r}; have {self.categories}")
        index = self.indexes[category]
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.metric == "cosine":
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return index.search(vectors, min(n, len(index)))

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for category, index in self.indexes.items():
            index.save(folder / category)
        meta = {"metric": self.metric, "categories": {c: len(i) for c, i in self.indexes.items()}}
        (folder / CATEGORIES_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path) -> CategoryIndexes:
        folder = Path(folder)
        meta = json.loads((folder / CATEGORIES_FILE).read_text())
        indexes = {
            category: EmbeddingIndex.load(folder / category) for category in meta["categories"]
        }
        for category, count in meta["categories"].items():
            if len(indexes[category]) != count:
                raise ValueError(
                    f"{folder}: index {category!r} holds {len(indexes[category])} items, "
                    f"metadata says {count}"
                )
        return cls(meta["metric"], indexes)
