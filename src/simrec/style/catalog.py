"""The catalog as the style recommender reads it: items and item→rooms at pinned versions,
and the deterministic item split used to hold items out of training."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from simrec.config import LakeSettings
from simrec.images import decode_batch
from simrec.lake.tables import Lakehouse, TableVersion

ITEM_COLUMNS = ["id", "category", "name", "sha256"]
TEXT_COLUMNS = ["name", "type", "colour", "description"]  # the product text the catalog ships


@dataclass
class StyleCatalog:
    """Catalog items (sorted by id) with their images and the rooms each appears in."""

    items_table: TableVersion
    item_rooms_table: TableVersion
    ids: np.ndarray  # object array of str
    categories: np.ndarray  # object array of str
    names: list[str | None]
    sha256: list[str]
    images: list[bytes]
    rooms: dict[str, frozenset[str]] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)  # name, type, colour, description joined

    def __len__(self) -> int:
        return len(self.ids)

    def pixels(self, size: int) -> np.ndarray:
        return decode_batch(self.images, size, 3)

    def mask(self, category: str) -> np.ndarray:
        return self.categories == category

    def items_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "id": self.ids.astype(str),
                "category": self.categories.astype(str),
                "name": self.names,
                "sha256": self.sha256,
            }
        )


def read_style_catalog(
    lake: Lakehouse,
    lake_settings: LakeSettings,
    items_version: int | None = None,
    item_rooms_version: int | None = None,
    categories: list[str] | None = None,
) -> StyleCatalog:
    """Items (optionally only some categories) and their rooms, each table pinned."""
    items_table = lake.pin(lake_settings.items_table, items_version)
    pairs_table = lake.pin(lake_settings.item_rooms_table, item_rooms_version)
    columns = list(dict.fromkeys([*ITEM_COLUMNS, *TEXT_COLUMNS, "image"]))
    rows = lake.read(items_table.name, items_table.version, columns=columns)
    rows = rows.sort_by("id")
    table = rows.to_pydict()
    keep = [
        position
        for position, category in enumerate(table["category"])
        if not categories or category in categories
    ]
    pairs = lake.read(pairs_table.name, pairs_table.version, columns=["item_id", "room_id"])
    rooms: dict[str, set[str]] = defaultdict(set)
    for item_id, room_id in zip(
        pairs.column("item_id").to_pylist(), pairs.column("room_id").to_pylist(), strict=True
    ):
        rooms[item_id].add(room_id)
    ids = [table["id"][position] for position in keep]
    return StyleCatalog(
        items_table=items_table,
        item_rooms_table=pairs_table,
        ids=np.asarray(ids, dtype=object),
        categories=np.asarray([table["category"][p] for p in keep], dtype=object),
        names=[table["name"][p] for p in keep],
        sha256=[table["sha256"][p] for p in keep],
        images=[table["image"][p] for p in keep],
        rooms={item_id: frozenset(rooms[item_id]) for item_id in ids if item_id in rooms},
        texts=[
            " ".join(str(table[column][p]) for column in TEXT_COLUMNS if table[column][p])
            for p in keep
        ],
    )


# ---------------------------------------------------------------- the item split

SPLIT_RULE = (
    "fold = int.from_bytes(sha256(item_id)[:8], 'big') mod {folds}; held out: fold == {fold}"
)


def item_folds(item_ids: np.ndarray | list[str], folds: int) -> np.ndarray:
    """Each item's fold, from a hash of its id alone: stable across runs, machines, table
    versions and row order, and an item never changes fold when others are added."""
    if folds < 2:
        raise ValueError(f"an item split needs at least 2 folds, got {folds}")
    return np.array(
        [
            int.from_bytes(hashlib.sha256(str(item_id).encode()).digest()[:8], "big") % folds
            for item_id in item_ids
        ],
        dtype=np.int64,
    )


def split_rule(folds: int, fold: int) -> str:
    return SPLIT_RULE.format(folds=folds, fold=fold)


def holdout_mask(item_ids: np.ndarray | list[str], folds: int, fold: int) -> np.ndarray:
    """True for held-out items (never trained on), False for training items."""
    if not 0 <= fold < folds:
        raise ValueError(f"holdout fold must be in [0, {folds}), got {fold}")
    return item_folds(item_ids, folds) == fold
