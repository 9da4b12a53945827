"""Catalog images already decoded (by the package step, as queries are decoded), handed to
the evaluation of that same bundle so its raw-pixel baseline and result grid do not read and
decode the catalog again."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DecodedItems:
    item_ids: list[str]
    pixels: np.ndarray  # uint8 (n, size, size, channels), row i = item_ids[i]

    def __post_init__(self) -> None:
        if len(self.item_ids) != len(self.pixels):
            raise ValueError(f"{len(self.item_ids)} ids for {len(self.pixels)} decoded images")

    def pixels_of(self, item_ids: list[str]) -> np.ndarray:
        """The images of `item_ids`, in that order; LookupError for an id not held."""
        if item_ids == self.item_ids:
            return self.pixels
        position = getattr(self, "_position", None)
        if position is None:
            position = {item_id: row for row, item_id in enumerate(self.item_ids)}
            object.__setattr__(self, "_position", position)
        missing = [item_id for item_id in item_ids if item_id not in position]
        if missing:
            raise LookupError(f"{len(missing)} items were not decoded: {missing[:3]}")
        return self.pixels[[position[item_id] for item_id in item_ids]]
