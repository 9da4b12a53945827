"""Which rows of a table are catalog items (what the index holds), and which of its columns
travel with them as item metadata.

The scope is recorded in a packaged model's lineage, so a later re-index applies exactly the
same rule to the rows that arrive afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from simrec.config import Settings

KEY_COLUMN = "id"
IMAGE_COLUMN = "image"
SPLIT_COLUMN = "split"
LABEL_COLUMN = "label"
CATALOG_SPLIT = "train"
# Bookkeeping columns that describe the row, not the item: never item metadata.
NOT_METADATA = frozenset(
    {KEY_COLUMN, IMAGE_COLUMN, SPLIT_COLUMN, "sha256", "source", "ingested_at"}
)


class ScopeMissingError(LookupError):
    """A model whose lineage does not say which rows of its table are catalog items."""


@dataclass(frozen=True)
class CatalogScope:
    """Rows of one split only (Fashion-MNIST: `train`; None: every row), and of some labels
    only (None: every label)."""

    split: str | None = None
    labels: tuple[int, ...] | None = None

    @classmethod
    def for_table(cls, column_names: list[str], settings: Settings) -> CatalogScope:
        """The catalog of a table as a bundle holds it: its train split when it has splits,
        every class (under the unseen-class protocol too: the held-out classes' queries are
        asked of an index that holds them and the seen ones, as TF Similarity evaluates)."""
        return cls(CATALOG_SPLIT if SPLIT_COLUMN in column_names else None, None)

    @classmethod
    def from_lineage(cls, lineage: dict[str, Any]) -> CatalogScope:
        if "catalog_split" not in lineage:
            raise ScopeMissingError(
                "the model's lineage does not record its catalog scope (catalog_split); it was "
                "packaged before re-indexing existed: package it again with `simrec package`"
            )
        labels = lineage.get("catalog_labels")
        return cls(
            lineage["catalog_split"], tuple(int(label) for label in labels) if labels else None
        )

    def as_lineage(self) -> dict[str, Any]:
        return {"catalog_split": self.split, "catalog_labels": list(self.labels or [])}

    @property
    def columns(self) -> list[str]:
        """The columns the rule reads."""
        columns = []
        if self.split is not None:
            columns.append(SPLIT_COLUMN)
        if self.labels is not None:
            columns.append(LABEL_COLUMN)
        return columns

    def mask(self, rows: pa.Table) -> pa.ChunkedArray | pa.Array:
        """True for the rows of `rows` that are catalog items."""
        missing = [column for column in self.columns if column not in rows.column_names]
        if missing:
            raise KeyError(
                f"the catalog scope needs column(s) {missing}; rows have {rows.column_names}"
            )
        keep = pa.array([True] * rows.num_rows, pa.bool_())
        if self.split is not None:
            keep = pc.and_(keep, pc.equal(rows.column(SPLIT_COLUMN), self.split))
        if self.labels is not None:
            values = pa.array(self.labels, rows.schema.field(LABEL_COLUMN).type)
            keep = pc.and_(keep, pc.is_in(rows.column(LABEL_COLUMN), value_set=values))
        return pc.fill_null(keep, False)

    def select(self, rows: pa.Table) -> pa.Table:
        return rows.filter(self.mask(rows))


def metadata_columns(column_names: list[str]) -> list[str]:
    """The columns of a table that describe its items (label, label_name; category, name, …)."""
    return [column for column in column_names if column not in NOT_METADATA]
