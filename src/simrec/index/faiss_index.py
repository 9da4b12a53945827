"""faiss index over item embeddings, keyed by the items' table ids.

faiss stores int64 keys; each key is the position of the item id in `item_ids`, which only
grows, so keys stay stable across incremental adds and removals (IndexIDMap2).
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np

from simrec.config import IndexSettings
from simrec.index.row_slices import RowSlices, split_by_rows

INDEX_FILE = "index.faiss"
IDS_FILE = "item_ids.json"
META_FILE = "index_meta.json"


class IndexMismatchError(ValueError):
    """An index whose vectors and id list disagree (e.g. files from different builds)."""


def _base_index(dim: int, settings: IndexSettings, train_size: int) -> tuple[faiss.Index, dict]:
    metric = faiss.METRIC_INNER_PRODUCT if settings.metric == "ip" else faiss.METRIC_L2
    if settings.kind == "flat":
        base = faiss.IndexFlatIP(dim) if settings.metric == "ip" else faiss.IndexFlatL2(dim)
        return base, {}
    if settings.kind == "hnsw":
        base = faiss.IndexHNSWFlat(dim, settings.hnsw_m, metric)
        base.hnsw.efConstruction = settings.hnsw_ef_construction
        base.hnsw.efSearch = settings.hnsw_ef_search
        return base, {
            "hnsw_m": settings.hnsw_m,
            "hnsw_ef_construction": settings.hnsw_ef_construction,
            "hnsw_ef_search": settings.hnsw_ef_search,
        }
    # IVF: faiss wants ~39 training points per list; fewer lists on small catalogs.
    nlist = max(1, min(settings.ivf_nlist, train_size // 39))
    quantizer = faiss.IndexFlatIP(dim) if settings.metric == "ip" else faiss.IndexFlatL2(dim)
    base = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
    base.nprobe = min(settings.ivf_nprobe, nlist)
    return base, {"ivf_nlist": nlist, "ivf_nprobe": base.nprobe}


class EmbeddingIndex:
    """k-nearest-neighbour search over embeddings; results are item ids and distances.

    Distances are "smaller is closer": 1 - cosine similarity for `ip` on normalised
    embeddings, Euclidean distance for `l2`.
    """

    def __init__(self, dim: int, settings: IndexSettings):
        self.dim = dim
        self.settings = settings
        self.item_ids: list[str] = []
        self._key_of: dict[str, int] = {}
        self._index: faiss.IndexIDMap2 | None = None
        self._row_slices: RowSlices | None = None  # a view of a flat index's vectors
        self.build_params: dict = {}

    # -- building -------------------------------------------------------------------------
    def add(self, item_ids: list[str] | np.ndarray, embeddings: np.ndarray) -> None:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        item_ids = [str(item_id) for item_id in item_ids]
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(
                f"expected embeddings of shape (n, {self.dim}), got {embeddings.shape}"
            )
        if len(item_ids) != len(embeddings):
            raise ValueError(f"{len(item_ids)} ids for {len(embeddings)} embeddings")
        clashes = [item_id for item_id in item_ids if item_id in self._key_of]
        if clashes or len(set(item_ids)) != len(item_ids):
            raise ValueError(f"ids already in the index or repeated: {clashes[:5]}")
        if not item_ids:
            return
        self._row_slices = None
        if self._index is None:
            # `auto` becomes a kind once, by the size of the first build; saved as that kind.
            kind = self.settings.kind_for(len(embeddings))
            self.settings = self.settings.model_copy(update={"kind": kind})
            base, self.build_params = _base_index(self.dim, self.settings, len(embeddings))
            if not base.is_trained:
                base.train(embeddings)
            self._index = faiss.IndexIDMap2(base)
        keys = np.arange(len(self.item_ids), len(self.item_ids) + len(item_ids), dtype=np.int64)
        self._index.add_with_ids(embeddings, keys)
        for key, item_id in zip(keys, item_ids, strict=True):
            self._key_of[item_id] = int(key)
        self.item_ids.extend(item_ids)

    def remove(self, item_ids: list[str]) -> int:
        """Remove items by id; returns how many were present. Other keys do not change."""
        keys = [
            self._key_of.pop(str(item_id)) for item_id in item_ids if str(item_id) in self._key_of
        ]
        if not keys or self._index is None:
            return 0
        self._row_slices = None
        selector = np.asarray(keys, dtype=np.int64)
        if self.settings.kind == "hnsw":
            # HNSW graphs cannot delete: rebuild from the remaining stored vectors.
            keep = np.asarray(sorted(self._key_of.values()), dtype=np.int64)
            vectors = (
                np.vstack([self._index.reconstruct(int(key)) for key in keep])
                if len(keep)
                else None
            )
            base, self.build_params = _base_index(self.dim, self.settings, len(keep))
            self._index = faiss.IndexIDMap2(base)
            if vectors is not None:
                self._index.add_with_ids(vectors, keep)
        else:
            self._index.remove_ids(selector)
        return len(keys)

    # -- querying ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    def live_item_ids(self) -> list[str]:
        """Ids of the items currently searchable (removed ones excluded), in key order."""
        return [item_id for item_id, _ in sorted(self._key_of.items(), key=lambda pair: pair[1])]

    def _lookup(self) -> np.ndarray:
        """key → item id (None past the end), built once per id list: rebuilding it per
        search cost more than the search itself on a large catalog."""
        cached = getattr(self, "_lookup_ids", None)
        if cached is None or len(cached) != len(self.item_ids) + 1:
            cached = self._lookup_ids = np.asarray(self.item_ids + [None], dtype=object)
        return cached

    def key_of(self, item_id: str) -> int | None:
        """The faiss key of a searchable item, None when the index does not hold it."""
        return self._key_of.get(str(item_id))

    def vectors(self, keys: np.ndarray) -> np.ndarray:
        """The stored vectors of items by key, (len(keys), dim) float32."""
        keys = np.asarray(keys, dtype=np.int64)
        if len(keys) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.settings.kind == "ivf":  # IVF lists need a key → position map to reconstruct
            base = faiss.extract_index_ivf(self._index.index)
            if base.direct_map.type == faiss.DirectMap.NoMap:
                base.make_direct_map()
        return np.vstack([self._index.reconstruct(int(key)) for key in keys]).astype(np.float32)

    def _search_parameters(self, among: np.ndarray) -> faiss.SearchParameters:
        """faiss parameters restricting a search to the keys `among`, keeping the kind's own
        search settings (faiss refuses generic parameters for HNSW and IVF)."""
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(among, dtype=np.int64))
        if self.settings.kind == "hnsw":
            base = faiss.downcast_index(self._index.index)
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=base.hnsw.efSearch)
        elif self.settings.kind == "ivf":
            base = faiss.extract_index_ivf(self._index.index)
            params = faiss.SearchParametersIVF(sel=selector, nprobe=base.nprobe)
        else:
            params = faiss.SearchParameters(sel=selector)
        params.simrec_selector = selector  # faiss holds a raw pointer: keep the selector alive
        return params

    def search(
        self, embeddings: np.ndarray, k: int, among: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Item ids (object array, None where fewer than k items) and distances, both (n, k).

        `among` (keys) restricts the search to those items, inside faiss (an IDSelector), so
        an exact index returns k of them whenever it holds k."""
        keys, distances = self.search_keys(embeddings, k, among)
        return self.ids_of(keys), distances

    def ids_of(self, keys: np.ndarray) -> np.ndarray:
        """Item ids of faiss keys (None for -1, faiss's "no result")."""
        return self._lookup()[np.where(keys < 0, len(self.item_ids), keys)]

    def search_keys(
        self,
        embeddings: np.ndarray,
        k: int,
        among: np.ndarray | None = None,
        threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """What `search` finds, as faiss keys (int64, -1 where fewer than k items) and
        distances: deep searches (evaluation's MAP@R reads R results a query) map keys to
        labels by array lookups instead of building millions of id strings.

        `threads`: how many threads the search may use (None: faiss's current setting). An
        unfiltered exact search of a few queries splits the rows between them
        (`simrec.index.row_slices`); any other search gets that many faiss threads."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"expected queries of shape (n, {self.dim}), got {embeddings.shape}")
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if len(self) == 0:
            raise ValueError("the index is empty")
        if (
            threads is not None
            and among is None
            and self.settings.kind == "flat"
            and split_by_rows(len(embeddings), len(self), threads)
        ):
            if self._row_slices is None:
                self._row_slices = RowSlices(self._index)
            scores, keys = self._row_slices.search(embeddings, k, threads)
        else:
            scores, keys = self._faiss_search(embeddings, k, among, threads)
        if self.settings.metric == "ip":
            distances = 1.0 - scores
        else:
            distances = np.sqrt(np.maximum(scores, 0.0))
        distances = np.where(keys < 0, np.inf, distances).astype(np.float32)
        return keys, distances

    def _faiss_search(
        self, embeddings: np.ndarray, k: int, among: np.ndarray | None, threads: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """faiss's own search on `threads` OpenMP threads; the setting is per calling
        thread, so it is restored."""
        params = None if among is None else self._search_parameters(among)
        previous = faiss.omp_get_max_threads()
        if threads is not None:
            faiss.omp_set_num_threads(threads)
        try:
            return self._index.search(embeddings, k, params=params)
        finally:
            faiss.omp_set_num_threads(previous)

    # -- persistence ------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self._index is None:
            raise ValueError("cannot save an empty index")
        faiss.write_index(self._index, str(folder / INDEX_FILE))
        live = sorted(self._key_of.items(), key=lambda pair: pair[1])
        (folder / IDS_FILE).write_text(json.dumps({"item_ids": self.item_ids, "live": live}))
        meta = {
            "dim": self.dim,
            "count": len(self),
            "settings": self.settings.model_dump(),
            "build_params": self.build_params,
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> EmbeddingIndex:
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        index = cls(meta["dim"], IndexSettings.model_validate(meta["settings"]))
        index.build_params = meta.get("build_params", {})
        stored = json.loads((folder / IDS_FILE).read_text())
        index.item_ids = list(stored["item_ids"])
        index._key_of = {item_id: int(key) for item_id, key in stored["live"]}
        index._index = faiss.read_index(str(folder / INDEX_FILE))
        if len(index) != len(index._key_of) or len(index) != meta["count"]:
            raise IndexMismatchError(
                f"{folder}: faiss holds {len(index)} vectors but the id list has "
                f"{len(index._key_of)} live ids (metadata says {meta['count']})"
            )
        if index._index.d != index.dim:
            raise IndexMismatchError(
                f"{folder}: faiss dim {index._index.d} != metadata {index.dim}"
            )
        return index


def build_index(
    item_ids: list[str] | np.ndarray, embeddings: np.ndarray, settings: IndexSettings
) -> EmbeddingIndex:
    index = EmbeddingIndex(embeddings.shape[1], settings)
    index.add(item_ids, embeddings)
    return index
