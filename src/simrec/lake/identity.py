"""Find the table a model was built from through the CURRENT lakehouse config, and make sure it
is the same Delta table (same `metadata().id`), not merely one with the same name.

Lineage records a table's name, path, version and id. The recorded absolute path is history:
the lake may have moved (another machine, `--set lake.root=...`), so readers resolve the table
as `lake.root / name` and compare ids; a table that was dropped and re-created under the same
name has a new id and is refused, since its versions and change feed are not the model's.
"""

from __future__ import annotations

from simrec.lake.tables import Lakehouse, TableVersion


class TableIdentityError(ValueError):
    """The table found under the configured lake is not the one the model was built from."""


def resolve_recorded_table(
    lake: Lakehouse, name: str, recorded_id: str | None, owner: str
) -> TableVersion:
    """Table `name` of `lake` at its latest version, checked to have the id `owner` (e.g. a
    model URI) recorded; lineage without an id (older bundles) is accepted by name."""
    latest = lake.pin(name)
    if recorded_id and latest.table_id != recorded_id:
        raise TableIdentityError(
            f"table {name!r} at {latest.path} is not the table {owner} was built from (Delta "
            f"table id {latest.table_id}, expected {recorded_id}): it was dropped and re-created, "
            f"or lake.root points at another lake. Point lake.root at the model's lake, or "
            f"package a new model from this table"
        )
    return latest
