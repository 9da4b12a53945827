"""The net effect of a Delta change data feed over a range of versions: which keys it touched
and, for those that still exist at the end, their final row.

A key can change several times in the range (inserted, updated, deleted, inserted again);
only its last state counts. Within one commit an update's pre-image comes before its
post-image.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from simrec.lake.tables import CHANGE_TYPE, COMMIT_VERSION

# Within one commit: the old state first, then the new one.
_STEP = {"delete": 0, "update_preimage": 0, "insert": 1, "update_postimage": 1}


@dataclass(frozen=True)
class NetChanges:
    first_version: int
    last_version: int
    touched: list[str]  # every key the feed mentions, sorted
    present: pa.Table  # final row of each touched key that still exists (feed columns dropped)
    key: str = "id"

    @property
    def absent(self) -> list[str]:
        """Touched keys that no longer exist at the end (deleted, possibly after other changes)."""
        kept = set(self.present.column(self.key).to_pylist()) if self.present.num_rows else set()
        return [value for value in self.touched if value not in kept]


def net_changes(
    changes: pa.Table, first_version: int, last_version: int, key: str = "id"
) -> NetChanges:
    """Reduce the feed `changes` (as read by `Lakehouse.changes`) to each key's last state."""
    unknown = set(changes.column(CHANGE_TYPE).to_pylist()) - set(_STEP)
    if unknown:
        raise ValueError(f"unexpected change types in the change data feed: {sorted(unknown)}")
    steps = pa.array([_STEP[kind] for kind in changes.column(CHANGE_TYPE).to_pylist()], pa.int8())
    order = pc.sort_indices(
        pa.table(
            {
                "key": changes.column(key),
                "version": changes.column(COMMIT_VERSION),
                "step": steps,
            }
        ),
        sort_keys=[("key", "ascending"), ("version", "ascending"), ("step", "ascending")],
    ).to_pylist()
    keys = changes.column(key).to_pylist()
    last_row: dict[str, int] = {}
    for position in order:  # ascending, so the last write per key wins
        last_row[keys[position]] = position
    kinds = changes.column(CHANGE_TYPE).to_pylist()
    present_rows = [row for row in last_row.values() if _STEP[kinds[row]] == 1]
    present = changes.take(pa.array(present_rows, pa.int64())).drop_columns(
        [CHANGE_TYPE, COMMIT_VERSION]
    )
    return NetChanges(
        first_version=first_version,
        last_version=last_version,
        touched=sorted(last_row),
        present=present.sort_by(key),
        key=key,
    )
