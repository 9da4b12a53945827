"""The fixed query set a bundle is measured on: the test split of the table its model was
trained on, at the version it was trained on. Every version of a registered model that
descends from the same training run (package, re-index) is scored on exactly these images,
so figures of a challenger and of the champion are comparable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from simrec.index.scope import IMAGE_COLUMN, KEY_COLUMN, LABEL_COLUMN, SPLIT_COLUMN
from simrec.lake.tables import Lakehouse, TableVersion

QUERY_SPLIT = "test"


class NoQuerySetError(LookupError):
    """A bundle whose lineage leads to no labelled test split: nothing to measure it on."""


@dataclass(frozen=True)
class QuerySet:
    table: TableVersion  # where the queries come from, at the pinned version
    ids: list[str]
    labels: np.ndarray  # int64, one per query
    images: list[bytes]  # stored image bytes, sent as a client would send them

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, keep: np.ndarray) -> QuerySet:
        positions = np.flatnonzero(keep)
        return QuerySet(
            self.table,
            [self.ids[i] for i in positions],
            self.labels[positions],
            [self.images[i] for i in positions],
        )


def read_query_set(table: TableVersion, max_queries: int | None) -> QuerySet:
    """The `test` rows of `table` ordered by id (the first `max_queries` of them when set)."""
    lake = Lakehouse(Path(table.path).parent)
    columns = [KEY_COLUMN, SPLIT_COLUMN, LABEL_COLUMN, IMAGE_COLUMN]
    available = lake.table(table.name, table.version).schema().to_arrow()
    missing = [c for c in columns if c not in {field.name for field in available}]
    if missing:
        raise NoQuerySetError(
            f"{table.name} v{table.version} has no labelled test split (missing {missing}): "
            "there is no query set to evaluate a bundle of it on"
        )
    rows = lake.read(table.name, table.version, columns=columns)
    rows = rows.filter(pc.equal(rows.column(SPLIT_COLUMN), QUERY_SPLIT)).sort_by(KEY_COLUMN)
    if max_queries is not None:
        rows = rows.slice(0, max_queries)
    if rows.num_rows == 0:
        raise NoQuerySetError(f"{table.name} v{table.version} has no {QUERY_SPLIT!r} rows")
    return QuerySet(
        table=table,
        ids=[str(item_id) for item_id in rows.column(KEY_COLUMN).to_pylist()],
        labels=np.asarray(rows.column(LABEL_COLUMN).to_pylist(), dtype=np.int64),
        images=rows.column(IMAGE_COLUMN).to_pylist(),
    )


def query_set_for(lineage: dict[str, Any], max_queries: int | None) -> QuerySet:
    """The fixed query set of a bundle with this lineage: its training run's table."""
    from simrec.runs import training_table

    run_id = lineage.get("training_run_id")
    if not run_id:
        raise NoQuerySetError("the bundle's lineage names no training run")
    return read_query_set(training_table(str(run_id)), max_queries)
