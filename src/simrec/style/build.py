"""The style build step: catalog at pinned versions → the configured featurizer → per-category
indexes → a saved bundle, logged to MLflow with its lineage.

`style.featurizer: selected` (the default) builds what `style select` chooses on held-out rooms,
with its held-out figures; a catalog too small to choose on (or `gram`) gets Gram vectors of
`style.backbone` / `style.layers`. Either way the bundle records which featurizer and why."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from simrec.config import Settings
from simrec.lake.tables import Lakehouse
from simrec.style.bundle import StyleBundle, StyleEncoder
from simrec.style.catalog import StyleCatalog, read_style_catalog
from simrec.style.features import StyleFeaturizer
from simrec.style.indexes import CategoryIndexes
from simrec.tracking import log_table_input, setup_mlflow, tracked_step

log = logging.getLogger(__name__)

BUNDLE_ARTIFACT = "style"

BUNDLE_TAG = "simrec.style.bundle"


CHOICE_PARAM = "style_featurizer_choice"  # why the bundle holds the featurizer it holds


@dataclass
class StyleBuildResult:
    run_id: str | None
    folder: Path
    bundle: StyleBundle
    catalog: StyleCatalog
    seconds: float
    selection: Any = None  # the StyleSelectResult (protocol, held-out figures) when selected


def bundle_meta(kind: str, catalog: StyleCatalog, featurizer: StyleFeaturizer) -> dict:
    return {
        "kind": kind,
        "items_table": catalog.items_table.as_dict(),
        "item_rooms_table": catalog.item_rooms_table.as_dict(),
        "weights_source": featurizer.backbone.weights_source,
        "layers": featurizer.backbone.layers,
        "image_size": featurizer.image_size,
        "style_dim": featurizer.dim,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def fit_style_bundle(
    settings: Settings, catalog: StyleCatalog, pixels: np.ndarray | None = None
) -> StyleBundle:
    """Fit the featurizer on the catalog's images and index every item by category."""
    featurizer = StyleFeaturizer(settings.style)
    if pixels is None:
        pixels = catalog.pixels(featurizer.image_size)
    log.info(
        f"style features of {len(catalog)} items ({featurizer.backbone.weights_source}, "
        f"{featurizer.image_size}px, layers {', '.join(settings.style.layers)})"
    )
    vectors = featurizer.fit_transform(pixels)
    indexes = CategoryIndexes.build(catalog.ids, catalog.categories, vectors, settings.style.metric)
    return StyleBundle(
        encoder=StyleEncoder(featurizer),
        indexes=indexes,
        items=catalog.items_frame(),
        vectors=vectors,
        meta=bundle_meta("gram", catalog, featurizer),
    )


def log_bundle(
    settings: Settings, bundle: StyleBundle, catalog: StyleCatalog, folder: Path
) -> None:
    """Params, lineage and the bundle folder, into the active MLflow run."""
    mlflow.log_params({k: v for k, v in settings.flat().items() if k.startswith("style.")})
    log_table_input(catalog.items_table, context="style_catalog")
    log_table_input(catalog.item_rooms_table, context="style_rooms")
    mlflow.log_params(
        {
            "style_weights_source": bundle.meta["weights_source"],
            "style_dim": bundle.vectors.shape[1],
            "style_items": len(bundle.items),
        }
    )
    mlflow.log_artifacts(str(folder), artifact_path=BUNDLE_ARTIFACT)
    mlflow.set_tag(BUNDLE_TAG, bundle.meta["kind"])


def catalog_to_fit(
    settings: Settings,
    lake: Lakehouse,
    items_version: int | None = None,
    item_rooms_version: int | None = None,
) -> StyleCatalog:
    """The catalog (at the pinned versions) of the configured categories; refuses an empty
    one, which nothing can be fitted on."""
    catalog = read_style_catalog(
        lake, settings.lake, items_version, item_rooms_version, settings.style.categories or None
    )
    if not len(catalog):
        raise ValueError("the catalog table holds no items of the configured categories")
    return catalog


def gram_reason(settings: Settings, catalog: StyleCatalog) -> str | None:
    """Why `style build` fits Gram vectors rather than the selected featurizer (None: select)."""
    style = settings.style
    if style.featurizer == "gram":
        return "style.featurizer: gram"
    if style.select is None:
        return "no style.select section"
    if len(catalog) < style.select.min_items:
        return (
            f"catalog of {len(catalog)} items < style.select.min_items {style.select.min_items}: "
            "too few held-out rooms to choose a featurizer on"
        )
    from simrec.style.protocol import catalog_pairs, co_occurrence

    together = co_occurrence(catalog.ids, catalog.rooms)
    if not catalog_pairs(catalog.categories, together, style.min_queries):
        return f"no category pair with ≥ style.min_queries {style.min_queries} eligible queries"
    return None


def build_style(
    settings: Settings,
    lake: Lakehouse,
    items_version: int | None = None,
    item_rooms_version: int | None = None,
    output_dir: Path | None = None,
    track: bool = True,
) -> StyleBuildResult:
    """The registered style bundle: the featurizer chosen on held-out rooms, or (see
    `gram_reason`) Gram vectors of the configured backbone."""
    started = time.perf_counter()
    catalog = catalog_to_fit(settings, lake, items_version, item_rooms_version)
    reason = gram_reason(settings, catalog)
    if reason is None:
        from simrec.style.select import select_style

        selected = select_style(settings, lake, output_dir=output_dir, track=track, catalog=catalog)
        return StyleBuildResult(
            selected.run_id, selected.folder, selected.bundle, catalog, selected.seconds, selected
        )
    log.info("style build fits gram vectors: %s", reason)
    bundle = fit_style_bundle(settings, catalog)
    bundle.meta["featurizer"] = f"gram ({settings.style.backbone})"
    bundle.meta["featurizer_choice"] = reason
    folder = bundle.save(Path(output_dir or tempfile.mkdtemp(prefix="simrec-style-")))
    seconds = time.perf_counter() - started
    run_id = None
    if track:
        setup_mlflow(settings.mlflow)
        with tracked_step("style_build", settings, run_name="style-build") as run:
            log_bundle(settings, bundle, catalog, folder)
            mlflow.log_params({"style_featurizer": bundle.meta["featurizer"], CHOICE_PARAM: reason})
            mlflow.log_metric("style_build_seconds", seconds)
            run_id = run.info.run_id
    counts = ", ".join(f"{c} {len(i)}" for c, i in bundle.indexes.indexes.items())
    log.info(f"style indexes: {counts} ({seconds:.0f} s); bundle in {folder}")
    return StyleBuildResult(run_id, folder, bundle, catalog, seconds)
