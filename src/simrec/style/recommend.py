"""Complete the look for one image: the n nearest items of each requested category."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from simrec.images import open_image, sha256_hex, to_array
from simrec.style.bundle import StyleBundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StyleRecommendation:
    category: str
    rank: int
    item_id: str
    name: str | None
    distance: float


def query_vectors(bundle: StyleBundle, payloads: list[bytes], sources: list[str]) -> np.ndarray:
    """Index vectors of a batch of query images, embedded as one batch. A catalog photo gets
    its item's own indexed vector (which also holds what the image alone lacks, e.g. the
    product text); any other image is decoded and run through the encoder."""
    rows = {sha: row for row, sha in enumerate(bundle.items["sha256"])}
    known = [rows.get(sha256_hex(payload)) for payload in payloads]
    vectors = np.zeros((len(payloads), bundle.vectors.shape[1]), dtype=np.float32)
    unknown = [position for position, row in enumerate(known) if row is None]
    for position, row in enumerate(known):
        if row is not None:
            vectors[position] = bundle.vectors[row]
    if unknown:
        size = bundle.encoder.image_size
        pixels = np.stack([to_array(open_image(payloads[p], sources[p]), size, 3) for p in unknown])
        vectors[unknown] = bundle.encoder.encode(pixels)
    return vectors


def query_category(bundle: StyleBundle, payload: bytes, vector: np.ndarray) -> str:
    """The query's own category: the catalog item with the same bytes, else the category of the
    nearest catalog item over every index (a best guess; pass it explicitly when known)."""
    matches = bundle.items.loc[bundle.items["sha256"] == sha256_hex(payload), "category"]
    if len(matches):
        return str(matches.iloc[0])
    best_category, best_distance = None, np.inf
    for category in bundle.indexes.categories:
        _, distances = bundle.indexes.search(vector[None], category, 1)
        if distances[0, 0] < best_distance:
            best_category, best_distance = category, float(distances[0, 0])
    log.info("query category not given: guessed %r from the nearest catalog item", best_category)
    return str(best_category)


def target_categories(
    bundle: StyleBundle, to: list[str] | None, own: str | None, include_own: bool
) -> list[str]:
    """The categories asked for (`to`, as given), or every indexed one but the query's own."""
    if to:
        unknown = [category for category in to if category not in bundle.indexes.indexes]
        if unknown:
            raise ValueError(
                f"unknown categories {unknown}; indexed: {', '.join(bundle.indexes.categories)}"
            )
        return list(dict.fromkeys(to))
    return [c for c in bundle.indexes.categories if include_own or c != own]


def recommend_for_payload(
    bundle: StyleBundle,
    payload: bytes,
    n: int,
    to: list[str] | None = None,
    own_category: str | None = None,
    include_own: bool = False,
    source: str = "query image",
    vector: np.ndarray | None = None,
) -> list[StyleRecommendation]:
    """For an image's bytes: the n nearest items in each target category, nearest first.

    Without `to`, every category except the query's own (given, or inferred) is returned;
    `include_own` adds it back. Categories named in `to` are returned even if one of them
    is the query's own: naming it is asking for it.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if vector is None:  # else: embedded already, with the rest of its request's batch
        vector = query_vectors(bundle, [payload], [source])[0]
    own = own_category
    if not to and own is None and not include_own:
        own = query_category(bundle, payload, vector)
    names = dict(zip(bundle.items["id"], bundle.items["name"], strict=True))
    # A catalog photo as the query: never recommend that very item back.
    itself = set(bundle.items.loc[bundle.items["sha256"] == sha256_hex(payload), "id"])
    results: list[StyleRecommendation] = []
    for category in target_categories(bundle, to, own, include_own):
        ids, distances = bundle.indexes.search(vector[None], category, n + len(itself))
        found = [
            (str(item_id), float(distance))
            for item_id, distance in zip(ids[0], distances[0], strict=True)
            if item_id is not None and item_id not in itself
        ][:n]
        results.extend(
            StyleRecommendation(category, rank + 1, item_id, names.get(item_id), distance)
            for rank, (item_id, distance) in enumerate(found)
        )
    return results
