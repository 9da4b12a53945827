"""The reindex step: bring a registered bundle up to date with its Delta table, no retraining.

The bundle's lineage records its table, the Delta version its catalog reflects and the rule
that picks catalog rows (`CatalogScope`). Reindexing reads the table's change data feed from
the next version to the latest, embeds only the rows inserted (or updated) in scope, with the
bundle's own SavedModel, removes deleted (or updated, or no longer in scope) items from the
faiss index by id (every other item keeps its key), and registers the result as a new version
of the same registered model: same weights, new index, items and thumbnails, new lineage.
When no catalog row changed, nothing is registered.

`full=True` re-embeds every catalog row of the latest version instead (same weights): the
fallback when the change feed is gone (vacuumed), and the baseline the benchmark compares with.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from simrec.config import Settings
from simrec.index.faiss_index import EmbeddingIndex
from simrec.index.scope import IMAGE_COLUMN, KEY_COLUMN, CatalogScope
from simrec.lake.changes import NetChanges, net_changes
from simrec.lake.identity import resolve_recorded_table
from simrec.lake.tables import ChangeFeedError, Lakehouse, TableVersion
from simrec.serving.bundle import (
    Embedder,
    LocalBundle,
    RegisteredVersion,
    download_bundle,
    embed_images,
    saved_model_embedder,
)
from simrec.serving.package import (
    CatalogBundle,
    PackageResult,
    catalog_lineage,
    embed_catalog,
    item_frame,
    make_thumbnails,
    query_frame,
    register_bundle,
)
from simrec.serving.pyfunc import (
    EMBEDDING_MODEL_ARTIFACT,
    INDEX_ARTIFACT,
    ITEM_ID_COLUMN,
    ITEMS_ARTIFACT,
    THUMBNAIL_COLUMN,
    THUMBNAILS_ARTIFACT,
)
from simrec.tracking import setup_mlflow


@dataclass(frozen=True)
class CatalogDelta:
    """What a range of table changes does to the catalog."""

    remove_ids: list[str]  # indexed items to drop: deleted, updated, or moved out of scope
    add_rows: pa.Table  # rows to embed and add: inserted or updated, in scope

    @property
    def is_empty(self) -> bool:
        return not self.remove_ids and self.add_rows.num_rows == 0


@dataclass(frozen=True)
class ReindexResult:
    parent: RegisteredVersion
    table: TableVersion  # the table version the catalog reflects now
    rows_added: int
    rows_removed: int
    rows_updated: int
    full: bool
    package: PackageResult | None  # None: no catalog change, nothing registered
    timings: dict[str, float] = field(default_factory=dict)  # seconds by phase

    @property
    def registered(self) -> bool:
        return self.package is not None

    def summary(self) -> str:
        if self.package is None:
            return (
                f"nothing to do: {self.parent.uri} is up to date with {self.table.name} "
                f"v{self.table.version} (no catalog rows changed); nothing registered"
            )
        how = "rebuilt in full" if self.full else "re-indexed"
        return (
            f"{self.package.registered_name} version {self.package.version} ({how} from "
            f"version {self.parent.version}, {self.table.name} v{self.table.version}): "
            f"+{self.rows_added} added, -{self.rows_removed} removed, {self.rows_updated} "
            f"updated, {self.package.lineage['index_size']} items; {self.package.registry_uri}"
        )


def plan_catalog_delta(
    changes: NetChanges, indexed_ids: set[str], scope: CatalogScope
) -> CatalogDelta:
    """Every touched item that is indexed comes out; every touched row that exists at the end
    and is in scope goes (back) in, embedded from its final image."""
    return CatalogDelta(
        remove_ids=[item_id for item_id in changes.touched if item_id in indexed_ids],
        add_rows=scope.select(changes.present),
    )


def apply_catalog_delta(
    catalog: CatalogBundle,
    delta: CatalogDelta,
    embed_rows: Callable[[pa.Table], np.ndarray],
    item_columns: list[str],
    thumbnail_size: int,
) -> CatalogBundle:
    """`catalog` with `delta` applied: removals by id, then the new rows embedded by
    `embed_rows(rows) -> embeddings` and added (faiss keys of untouched items do not change)."""
    index = catalog.index
    index.remove(delta.remove_ids)
    removed = set(delta.remove_ids)
    items = catalog.items[~catalog.items[ITEM_ID_COLUMN].astype(str).isin(removed)]
    thumbnails = catalog.thumbnails[~catalog.thumbnails[ITEM_ID_COLUMN].astype(str).isin(removed)]
    if delta.add_rows.num_rows:
        rows = delta.add_rows
        item_ids = [str(item_id) for item_id in rows.column(KEY_COLUMN).to_pylist()]
        images = rows.column(IMAGE_COLUMN).to_pylist()
        index.add(item_ids, embed_rows(rows))
        new_items = item_frame(rows, item_columns).astype(items.dtypes.to_dict())
        items = pd.concat([items, new_items], ignore_index=True)
        thumbnails = pd.concat(
            [thumbnails, make_thumbnails(item_ids, images, thumbnail_size)], ignore_index=True
        )
    if len(index) == 0:
        raise ValueError("every catalog item was removed: there is nothing left to serve")
    return CatalogBundle(index, items.reset_index(drop=True), thumbnails.reset_index(drop=True))


def _load_catalog(bundle: LocalBundle) -> CatalogBundle:
    return CatalogBundle(
        index=EmbeddingIndex.load(bundle.artifacts[INDEX_ARTIFACT]),
        items=pd.read_parquet(bundle.artifacts[ITEMS_ARTIFACT]),
        thumbnails=pd.read_parquet(bundle.artifacts[THUMBNAILS_ARTIFACT]),
    )


@dataclass(frozen=True)
class _Update:
    catalog: CatalogBundle
    rows_added: int
    rows_removed: int
    rows_updated: int


class _Source:
    """The bundle being updated, its table at the latest version, and how to embed rows."""

    def __init__(self, bundle: LocalBundle, settings: Settings):
        self.bundle = bundle
        self.scope = CatalogScope.from_lineage(bundle.lineage)
        # Through the current config (lake.root + name), never the path recorded at packaging.
        self.lake = Lakehouse(settings.lake.root)
        self.latest = resolve_recorded_table(
            self.lake,
            bundle.lineage["source_table"],
            bundle.lineage.get("source_table_id"),
            bundle.registered.uri,
        )
        self.recorded = int(bundle.lineage["source_table_version"])
        if self.latest.version < self.recorded:
            raise ChangeFeedError(
                f"{self.latest.name} is at version {self.latest.version}, older than version "
                f"{self.recorded} that {bundle.registered.uri} was built from: was the table "
                f"re-created?"
            )
        self.catalog = _load_catalog(bundle)
        self.item_columns = [c for c in self.catalog.items.columns if c != ITEM_ID_COLUMN]
        self.read_columns = list(
            dict.fromkeys([KEY_COLUMN, IMAGE_COLUMN, *self.item_columns, *self.scope.columns])
        )
        self.thumbnail_size = settings.serving.thumbnail_size
        self.batch_size = settings.reindex.embed_batch_size

    def embedder(self) -> Embedder:
        """The bundle's own SavedModel (loaded only when there is something to embed)."""
        folder = self.bundle.artifacts[EMBEDDING_MODEL_ARTIFACT]
        return saved_model_embedder(folder, self.batch_size)

    def embed_rows(self, rows: pa.Table) -> np.ndarray:
        images = rows.column(IMAGE_COLUMN).to_pylist()
        return embed_images(self.embedder(), images, self.bundle.config, self.batch_size)


def _incremental_update(source: _Source) -> _Update | None:
    """The catalog with the table's changes since the recorded version; None if none."""
    if source.latest.version == source.recorded:
        return None
    first = source.recorded + 1
    changes = source.lake.changes(
        source.latest.name, first, source.latest.version, source.read_columns
    )
    net = net_changes(changes, first, source.latest.version)
    delta = plan_catalog_delta(net, set(source.catalog.index.live_item_ids()), source.scope)
    if delta.is_empty:
        return None
    added = set(pc.cast(delta.add_rows.column(KEY_COLUMN), pa.string()).to_pylist())
    removed = set(delta.remove_ids)
    catalog = apply_catalog_delta(
        source.catalog, delta, source.embed_rows, source.item_columns, source.thumbnail_size
    )
    return _Update(catalog, len(added - removed), len(removed - added), len(added & removed))


def _full_rebuild(source: _Source) -> _Update:
    """Every catalog row of the latest version embedded again, into a fresh index."""
    old_ids = set(source.catalog.index.live_item_ids())
    rows = source.scope.select(
        source.lake.read(source.latest.name, source.latest.version, columns=source.read_columns)
    )
    catalog = embed_catalog(
        rows,
        source.embedder(),
        source.bundle.config,
        source.catalog.index.settings,
        source.item_columns,
        source.thumbnail_size,
        source.batch_size,
    )
    new_ids = set(catalog.index.live_item_ids())
    return _Update(catalog, len(new_ids - old_ids), len(old_ids - new_ids), 0)


def reindex(
    settings: Settings, model_uri: str, alias: str | None = None, full: bool = False
) -> ReindexResult:
    """Update the registered bundle `model_uri` (`models:/name@alias` or `models:/name/N`) to
    the latest version of its table; see the module docstring. `alias` (default
    `reindex.alias`; "" for none) is pointed at the new version."""
    setup_mlflow(settings.mlflow)
    alias = settings.reindex.alias if alias is None else (alias or None)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="simrec-reindex-") as workdir:
        source = _Source(download_bundle(model_uri, Path(workdir)), settings)
        bundle, lineage = source.bundle, source.bundle.lineage
        loaded = time.perf_counter()
        update = _full_rebuild(source) if full else _incremental_update(source)
        updated = time.perf_counter()
        timings = {"load_s": loaded - started, "update_s": updated - loaded}
        if update is None:
            return ReindexResult(bundle.registered, source.latest, 0, 0, 0, full, None, timings)
        new_lineage = {
            **catalog_lineage(
                source.latest, source.scope, update.catalog.index, lineage["training_run_id"]
            ),
            "parent_model_version": bundle.registered.version,
            "catalog_update": "full" if full else "incremental",
            "changes_from_version": None if full else source.recorded + 1,
            "rows_added": update.rows_added,
            "rows_removed": update.rows_removed,
            "rows_updated": update.rows_updated,
        }
        example = bundle.example
        if example is None:
            example = query_frame(update.catalog.thumbnails[THUMBNAIL_COLUMN].head(2).tolist())
        package = register_bundle(
            bundle.artifacts[EMBEDDING_MODEL_ARTIFACT],
            update.catalog,
            bundle.config,
            example,
            new_lineage,
            bundle.registered.name,
            alias,
            step="reindex",
            tables={"catalog": source.latest},
            tags={
                "simrec.training_run_id": str(lineage["training_run_id"]),
                "simrec.parent_model": bundle.registered.uri,
            },
        )
        timings["register_s"] = time.perf_counter() - updated
        return ReindexResult(
            parent=bundle.registered,
            table=source.latest,
            rows_added=update.rows_added,
            rows_removed=update.rows_removed,
            rows_updated=update.rows_updated,
            full=full,
            package=package,
            timings=timings,
        )
