"""Exact search of a few queries on several threads: the catalog's rows split between them.

faiss spreads a flat search over its OpenMP threads by queries. A micro-batch of a few
queries gives a second thread nothing to do but wait: two faiss threads take about as long
as one, for twice the CPU. Splitting the rows instead, one contiguous slice a thread, each
slice one `faiss.knn` product over a view of the index's own vectors (no copy), then merging
the slices' top k, runs the threads side by side for the CPU time of one. From a few dozen
queries faiss's own threads do as well or better, so larger searches keep them.
`python -m bench.batch_search` measures the three ways (section `batch_search` of the
README's results).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import faiss
import numpy as np

# Below this many queries per thread a search is split by rows (see the module docstring).
QUERIES_PER_THREAD = 16


def split_by_rows(queries: int, rows: int, threads: int) -> bool:
    """Whether a flat search of `queries` over `rows` on `threads` threads splits the rows."""
    return threads > 1 and queries < QUERIES_PER_THREAD * threads and rows >= threads


@cache
def _pool(threads: int) -> ThreadPoolExecutor:
    """Threads that search one slice each; faiss inside them stays on one thread, or each
    slice would start OpenMP threads of its own on the same cores."""
    return ThreadPoolExecutor(
        threads,
        thread_name_prefix="simrec-slice",
        initializer=faiss.omp_set_num_threads,
        initargs=(1,),
    )


# A forked child has none of its parent's threads: it starts pools of its own.
os.register_at_fork(after_in_child=_pool.cache_clear)


class RowSlices:
    """The vectors and keys of a flat `IndexIDMap2`, searched slice by slice.

    A view, not a copy: valid until the index changes (`EmbeddingIndex` drops it then).
    """

    def __init__(self, index: faiss.IndexIDMap2):
        flat = faiss.downcast_index(index.index)
        rows, dim = int(flat.ntotal), int(flat.d)
        self._vectors = faiss.rev_swig_ptr(flat.get_xb(), rows * dim).reshape(rows, dim)
        self._keys = faiss.vector_to_array(index.id_map)
        self._metric = flat.metric_type
        self._index = index  # the view borrows its memory

    def search(self, queries: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
        """What `index.search(queries, k)` returns, scores and keys (-1: no item), from
        `threads` row slices searched side by side."""
        rows = len(self._vectors)
        bounds = np.linspace(0, rows, min(threads, rows) + 1).astype(np.int64)

        def search_slice(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
            scores, positions = faiss.knn(
                queries, self._vectors[start:stop], k, metric=self._metric
            )
            return scores, np.where(positions < 0, -1, positions + start)

        pool, ranges = _pool(threads), list(zip(bounds[:-1], bounds[1:], strict=True))
        try:
            futures = [pool.submit(search_slice, start, stop) for start, stop in ranges]
        except RuntimeError:  # the interpreter is exiting (a server's last health check)
            found = [search_slice(start, stop) for start, stop in ranges]
        else:
            found = [future.result() for future in futures]
        scores = np.hstack([slice_scores for slice_scores, _ in found])
        positions = np.hstack([slice_positions for _, slice_positions in found])
        inner_product = self._metric == faiss.METRIC_INNER_PRODUCT
        missing = -np.inf if inner_product else np.inf
        scores = np.where(positions < 0, missing, scores)
        order = np.argsort(-scores if inner_product else scores, axis=1, kind="stable")[:, :k]
        positions = np.take_along_axis(positions, order, axis=1)
        keys = np.where(positions < 0, -1, self._keys[np.maximum(positions, 0)])
        return np.take_along_axis(scores, order, axis=1).astype(np.float32), keys
