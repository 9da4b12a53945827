"""faiss index: exact answers, save/load equality, incremental add and removal by id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simrec.config import IndexSettings
from simrec.evaluation.retrieval import exact_neighbours
from simrec.index.faiss_index import EmbeddingIndex, IndexMismatchError, build_index


def _unit_vectors(count: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _ids(count: int, start: int = 0) -> list[str]:
    return [f"item-{position}" for position in range(start, start + count)]


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_flat_index_matches_brute_force(metric: str) -> None:
    vectors = _unit_vectors(500)
    queries = _unit_vectors(20, seed=1)
    index = build_index(_ids(500), vectors, IndexSettings(kind="flat", metric=metric))
    ids, distances = index.search(queries, 5)
    expected = exact_neighbours(queries, vectors, 5, metric)
    assert ids.tolist() == [[f"item-{j}" for j in row] for row in expected]
    assert np.all(np.diff(distances, axis=1) >= -1e-6)  # nearest first
    if metric == "ip":
        assert np.allclose(
            distances[:, 0], 1 - (queries * vectors[expected[:, 0]]).sum(axis=1), atol=1e-5
        )


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_find_the_item_itself(kind: str) -> None:
    vectors = _unit_vectors(2000)
    index = build_index(_ids(2000), vectors, IndexSettings(kind=kind, ivf_nlist=16, ivf_nprobe=16))
    ids, _ = index.search(vectors[:100], 1)
    assert (ids[:, 0] == np.array(_ids(100))).mean() >= 0.95


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip_gives_identical_results(tmp_path: Path, kind: str) -> None:
    vectors = _unit_vectors(1000)
    index = build_index(_ids(1000), vectors, IndexSettings(kind=kind, ivf_nlist=8))
    index.save(tmp_path / "index")
    loaded = EmbeddingIndex.load(tmp_path / "index")
    queries = _unit_vectors(30, seed=3)
    before, after = index.search(queries, 10), loaded.search(queries, 10)
    assert len(loaded) == 1000
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_incremental_add_and_remove_keep_ids_stable(kind: str) -> None:
    vectors = _unit_vectors(300)
    index = build_index(_ids(200), vectors[:200], IndexSettings(kind=kind))
    index.add(_ids(100, start=200), vectors[200:])
    assert len(index) == 300
    ids, distances = index.search(vectors[250:251], 1)
    assert ids[0, 0] == "item-250" and distances[0, 0] == pytest.approx(0, abs=1e-5)
    assert index.remove(["item-250", "item-3", "not-there"]) == 2
    assert len(index) == 298
    ids, _ = index.search(vectors[[250, 3, 7]], 1)
    assert ids[0, 0] != "item-250" and ids[1, 0] != "item-3" and ids[2, 0] == "item-7"
    with pytest.raises(ValueError, match="already"):
        index.add(["item-7"], vectors[:1])


def test_fewer_items_than_k_pads_with_none() -> None:
    index = build_index(_ids(3), _unit_vectors(3), IndexSettings())
    ids, distances = index.search(_unit_vectors(1, seed=5), 5)
    assert ids[0, 3:].tolist() == [None, None] and np.isinf(distances[0, 3:]).all()


def test_bad_queries_and_mismatched_files_fail_loudly(tmp_path: Path) -> None:
    index = build_index(_ids(10), _unit_vectors(10), IndexSettings())
    with pytest.raises(ValueError, match="shape"):
        index.search(np.zeros((1, 3), dtype=np.float32), 1)
    with pytest.raises(ValueError, match="k must be positive"):
        index.search(_unit_vectors(1), 0)
    folder = index.save(tmp_path / "index")
    other = build_index(_ids(12), _unit_vectors(12), IndexSettings())
    other.save(tmp_path / "other")
    (folder / "index.faiss").write_bytes((tmp_path / "other" / "index.faiss").read_bytes())
    with pytest.raises(IndexMismatchError, match="12 vectors"):
        EmbeddingIndex.load(folder)


def test_auto_kind_is_exact_up_to_the_threshold_and_approximate_above(tmp_path: Path) -> None:
    import faiss

    settings = IndexSettings(kind="auto", auto_flat_max_rows=300, auto_large_kind="hnsw")
    kinds = {}
    for rows in (300, 301):
        built = build_index(_ids(rows), _unit_vectors(rows), settings)
        loaded = EmbeddingIndex.load(built.save(tmp_path / str(rows)))
        kinds[rows] = (loaded.settings.kind, type(faiss.downcast_index(loaded._index.index)))
        more = _unit_vectors(5, seed=3)  # later additions keep the kind of the first build
        loaded.add(_ids(5, start=rows), more)
        assert loaded.search(more, 1)[0][:, 0].tolist() == _ids(5, start=rows)
    assert kinds == {300: ("flat", faiss.IndexFlatIP), 301: ("hnsw", faiss.IndexHNSWFlat)}


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("threads", [2, 3])
def test_row_sliced_search_finds_what_one_faiss_search_finds(metric: str, threads: int) -> None:
    """A few queries on several threads split the rows (`simrec.index.row_slices`): the
    same keys and distances as faiss's own search, after removals moved the stored rows,
    and padded when a slice holds fewer than k items."""
    vectors = _unit_vectors(3000, dim=32)
    index = build_index(_ids(3000), vectors, IndexSettings(kind="flat", metric=metric))
    queries = _unit_vectors(8, dim=32, seed=4)
    assert index.search_keys(queries, 7, threads=threads)[0].shape == (8, 7)  # a cached view
    index.remove(_ids(40, start=100))  # faiss compacts its rows: the view must follow
    expected_keys, expected_distances = index.search_keys(queries, 7, threads=1)
    keys, distances = index.search_keys(queries, 7, threads=threads)
    assert np.array_equal(keys, expected_keys)
    assert np.allclose(distances, expected_distances, atol=1e-6)
    assert not set(keys.ravel()) & {index.key_of(i) for i in _ids(40, start=100)} - {None}

    small = build_index(_ids(5), vectors[:5], IndexSettings(kind="flat", metric=metric))
    padded_keys, padded_distances = small.search_keys(queries[:2], 4, threads=threads)
    assert np.array_equal(padded_keys, small.search_keys(queries[:2], 4, threads=1)[0])
    assert (padded_keys >= 0).all() and np.isfinite(padded_distances).all()
    keys, distances = small.search_keys(queries[:2], 8, threads=threads)
    assert (keys[:, 5:] == -1).all() and np.isinf(distances[:, 5:]).all()
    assert sorted(keys[0, :5]) == [0, 1, 2, 3, 4]


def test_a_few_queries_on_several_threads_search_slices_side_by_side(monkeypatch) -> None:
    """The split only pays if the slices run on different threads at once."""
    import threading

    import faiss

    index = build_index(_ids(2000), _unit_vectors(2000), IndexSettings(kind="flat"))
    queries = _unit_vectors(4, seed=2)
    knn, workers, barrier = faiss.knn, set(), threading.Barrier(2, timeout=10)

    def recording(*args, **kwargs):
        workers.add(threading.get_ident())
        barrier.wait()  # both slices inside faiss at the same time, or this times out
        return knn(*args, **kwargs)

    monkeypatch.setattr(faiss, "knn", recording)
    keys, _ = index.search_keys(queries, 5, threads=2)
    assert len(workers) == 2 and threading.get_ident() not in workers
    monkeypatch.setattr(
        faiss, "knn", lambda *args, **kwargs: workers.add(0) or knn(*args, **kwargs)
    )
    assert np.array_equal(keys, index.search_keys(queries, 5, threads=1)[0])
    workers.clear()
    index.search_keys(_unit_vectors(200, seed=3), 5, threads=2)  # faiss's own threads suffice
    index.search_keys(queries, 5, among=np.arange(100), threads=2)  # filters stay in faiss
    assert not workers


def test_row_sliced_search_works_in_a_forked_child() -> None:
    """A child forked after a sliced search has no slice threads; it must start its own
    rather than queue work for threads that do not exist (and hang)."""
    import multiprocessing

    index = build_index(_ids(2000), _unit_vectors(2000), IndexSettings(kind="flat"))
    queries = _unit_vectors(4, seed=2)
    expected = index.search_keys(queries, 5, threads=2)[0]
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    child = context.Process(  # forked: the target is not pickled
        target=lambda: answers.put(index.search_keys(queries, 5, threads=2)[0])
    )
    child.start()
    try:
        found = answers.get(timeout=60)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    assert np.array_equal(found, expected)


def test_row_sliced_search_still_answers_once_its_threads_are_gone() -> None:
    """At interpreter exit no thread can start (a server's last health self-query): the
    slices are searched in the calling thread instead of failing the query."""
    from simrec.index import row_slices

    index = build_index(_ids(2000), _unit_vectors(2000), IndexSettings(kind="flat"))
    queries = _unit_vectors(4, seed=2)
    expected = index.search_keys(queries, 5, threads=1)[0]
    row_slices._pool(2).shutdown()
    try:
        assert np.array_equal(index.search_keys(queries, 5, threads=2)[0], expected)
    finally:
        row_slices._pool.cache_clear()
