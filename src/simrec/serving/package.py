"""The package step: bundle an embedding model, its faiss index, item metadata and thumbnails
into one MLflow pyfunc model, log it with lineage, register it and set an alias.

`package_run` bundles a training run; `simrec.index.reindex` re-bundles a registered version
after the catalog changed. Both go through `embed_catalog` / `register_bundle` here.
"""

from __future__ import annotations

import base64
import io
import logging
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf
from mlflow.models import infer_signature
from mlflow.models.signature import ModelSignature
from mlflow.pyfunc import PythonModelContext
from PIL import Image

import simrec
from simrec.config import IndexSettings, Settings
from simrec.evaluation.decoded import DecodedItems
from simrec.images import open_image
from simrec.index.faiss_index import EmbeddingIndex, build_index
from simrec.index.scope import IMAGE_COLUMN as TABLE_IMAGE_COLUMN
from simrec.index.scope import KEY_COLUMN, CatalogScope, metadata_columns
from simrec.lake.tables import Lakehouse, TableVersion
from simrec.runs import latest_run_id, load_embedding_model, training_table
from simrec.serving.bundle import (
    BundleNotFoundError,
    Embedder,
    embed_images,
    resolve_version,
    saved_model_embedder,
)
from simrec.serving.contract import params_schema, request_schema
from simrec.serving.pyfunc import (
    EMBEDDING_MODEL_ARTIFACT,
    IMAGE_COLUMN,
    INDEX_ARTIFACT,
    ITEM_ID_COLUMN,
    ITEMS_ARTIFACT,
    K_COLUMN,
    THUMBNAIL_COLUMN,
    THUMBNAILS_ARTIFACT,
    BundleConfig,
    EmbeddingSearchModel,
    ImageSearchModel,
)
from simrec.tracking import pinned_requirements, setup_mlflow, tracked_step

log = logging.getLogger(__name__)

MODEL_NAME = "simrec_model"  # the logged model's name inside the package run
# What the bundle imports at inference time, pinned to the versions that packaged it.
RUNTIME_DISTRIBUTIONS = (
    "mlflow",
    "tensorflow",
    "faiss-cpu",
    "numpy",
    "pandas",
    "pillow",
    "pyarrow",
    "pydantic",
    "PyYAML",
    "protobuf",
)


@dataclass(frozen=True)
class PackageResult:
    run_id: str  # the package run
    model_uri: str  # the logged model (models:/m-…)
    registered_name: str
    version: int
    alias: str | None
    lineage: dict[str, Any]
    evaluation: Any = None  # EvaluationReport of the bundle itself, when it has a query set
    promotion: Any = None  # PromotionResult, when the gate ran
    timings: dict[str, float] = field(default_factory=dict)  # seconds: package, evaluate, gate

    @property
    def registry_uri(self) -> str:
        """`models:/name@alias` (or `models:/name/version` without an alias)."""
        if self.alias:
            return f"models:/{self.registered_name}@{self.alias}"
        return f"models:/{self.registered_name}/{self.version}"


@dataclass
class CatalogBundle:
    """The parts of a bundle that follow the catalog: the index, and the metadata and
    thumbnails of exactly the items it holds."""

    index: EmbeddingIndex
    items: pd.DataFrame  # id + metadata columns, one row per searchable item
    thumbnails: pd.DataFrame  # id, thumbnail (PNG bytes)
    pixels: np.ndarray | None = None  # the items decoded as queries are (`keep_pixels`)

    def write(self, folder: Path) -> dict[str, str]:
        """Save the three artifacts under `folder`; their paths by bundle artifact key."""
        index_dir = self.index.save(folder / "index")
        items_file = folder / "items.parquet"
        self.items.to_parquet(items_file, index=False)
        thumbnails_file = folder / "thumbnails.parquet"
        self.thumbnails.to_parquet(thumbnails_file, index=False)
        return {
            INDEX_ARTIFACT: str(index_dir),
            ITEMS_ARTIFACT: str(items_file),
            THUMBNAILS_ARTIFACT: str(thumbnails_file),
        }


def runtime_requirements(extra: tuple[str, ...] = ()) -> list[str]:
    return pinned_requirements((*RUNTIME_DISTRIBUTIONS, *extra))


def thumbnail_png(payload: bytes, size: int, source: str = "image") -> bytes:
    """A PNG that fits in `size`×`size` (shrunk, never enlarged), keeping the aspect ratio.
    A stored PNG that already fits, in a plain mode and with no ancillary metadata, is its
    own thumbnail (re-encoding 60,000 such Fashion-MNIST images cost seconds for nothing)."""
    image = open_image(payload, source)
    if (
        image.format == "PNG"
        and max(image.size) <= size
        and image.mode in ("L", "RGB", "RGBA")
        and not image.info
    ):
        return payload
    if image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def make_thumbnails(item_ids: list[str], images: list[bytes], size: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            ITEM_ID_COLUMN: item_ids,
            THUMBNAIL_COLUMN: [
                thumbnail_png(payload, size, f"item {item_id}")
                for item_id, payload in zip(item_ids, images, strict=True)
            ],
        }
    )


def query_frame(images: list[bytes], ks: list[int] | None = None) -> pd.DataFrame:
    """The model's input: base64 images, and k per query when given."""
    frame = pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(p).decode("ascii") for p in images]})
    if ks is not None:
        frame[K_COLUMN] = pd.Series(ks, dtype="int64")
    return frame


def bundle_signature(example: pd.DataFrame, output: pd.DataFrame) -> ModelSignature:
    """Outputs inferred from a real example's real output; inputs and params are the request
    contract's (`simrec.serving.contract`): an image or an item id per row, optional k and
    filters."""
    with warnings.catch_warnings():
        # "integer columns cannot hold missing values": true, and k is never missing in a
        # row; it is left out as a whole column or given (the server rejects anything else).
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature = infer_signature(example, output)
    signature.inputs = request_schema()
    signature.params = params_schema()
    return signature


def embed_catalog(
    rows: pa.Table,
    embedder: Embedder,
    config: BundleConfig,
    index_settings: IndexSettings,
    item_columns: list[str],
    thumbnail_size: int,
    batch_size: int,
    with_thumbnails: bool = True,
    keep_pixels: bool = False,
) -> CatalogBundle:
    """A fresh bundle catalog from table rows (`id`, `image` and `item_columns`): every row
    embedded and indexed, its metadata and (`with_thumbnails`) a thumbnail kept; with
    `keep_pixels` the decoded images too (what the raw-pixel baseline searches)."""
    if rows.num_rows == 0:
        raise ValueError("the catalog holds no rows: nothing to index")
    item_ids = [str(item_id) for item_id in rows.column(KEY_COLUMN).to_pylist()]
    images = rows.column(TABLE_IMAGE_COLUMN).to_pylist()
    decoded: list[np.ndarray] | None = [] if keep_pixels else None
    embeddings = embed_images(embedder, images, config, batch_size, decoded)
    return CatalogBundle(
        index=build_index(item_ids, embeddings, index_settings),
        items=item_frame(rows, item_columns),
        thumbnails=make_thumbnails(item_ids, images, thumbnail_size)
        if with_thumbnails
        else make_thumbnails([], [], thumbnail_size),
        pixels=np.concatenate(decoded) if decoded else None,
    )


def item_frame(rows: pa.Table, item_columns: list[str]) -> pd.DataFrame:
    """`id` and the metadata columns of `rows`, as the bundle's items table holds them."""
    return rows.select([KEY_COLUMN, *item_columns]).to_pandas()


def bundle_config(settings: Settings) -> BundleConfig:
    return BundleConfig(
        image_size=settings.model.image_size,
        channels=settings.model.channels,
        default_k=settings.recommend.k,
        max_k=settings.recommend.max_k,
        max_batch_size=settings.serving.max_batch_size,
        max_image_pixels=settings.serving.max_image_pixels,
        image_formats=tuple(settings.serving.image_formats),
        search_threads=settings.serving.search_threads,
        search_blas_min_queries=settings.serving.search_blas_min_queries,
    )


def catalog_lineage(
    table: TableVersion, scope: CatalogScope, index: EmbeddingIndex, training_run_id: str
) -> dict[str, Any]:
    """Where the bundle's catalog came from: what `simrec reindex` continues from."""
    return {
        "source_table": table.name,
        "source_table_path": table.path,
        "source_table_version": table.version,
        "source_table_id": table.table_id,
        "training_run_id": training_run_id,
        "index_size": len(index),
        "index_kind": index.settings.kind,
        "index_metric": index.settings.metric,
        **scope.as_lineage(),
    }


def example_images(rows: pa.Table, catalog_ids: list[str], count: int = 2) -> list[bytes]:
    """Images for the bundle's input example: rows outside the catalog (e.g. the test split)
    when the table has them, else the first catalog items."""
    catalog = pa.array(catalog_ids, pa.string())
    outside = rows.filter(pc.invert(pc.is_in(rows.column(KEY_COLUMN), value_set=catalog)))
    chosen = outside if outside.num_rows else rows
    return chosen.sort_by(KEY_COLUMN).slice(0, count).column(TABLE_IMAGE_COLUMN).to_pylist()


def export_embedding_model(
    keras_model: tf.keras.Model, folder: Path, image_size: int, channels: int
) -> Path:
    """Save `keras_model` as a plain SavedModel whose `embed` takes raw uint8 pixels."""
    module = tf.Module()
    module.model = keras_model
    spec = tf.TensorSpec([None, image_size, image_size, channels], tf.uint8, name="pixels")

    @tf.function(input_signature=[spec])
    def embed(pixels: tf.Tensor) -> tf.Tensor:
        return keras_model(tf.cast(pixels, tf.float32), training=False)

    module.embed = embed
    tf.saved_model.save(module, str(folder), signatures={"serving_default": embed})
    return folder


def _code_copy(folder: Path) -> Path:
    """A copy of the simrec package (without caches), so the bundle loads where simrec is
    not installed."""
    target = folder / "simrec"
    shutil.copytree(
        Path(simrec.__file__).parent, target, ignore=shutil.ignore_patterns("__pycache__")
    )
    return target


def log_bundle(
    python_model: ImageSearchModel,
    artifacts: dict[str, str],
    config: BundleConfig,
    example: pd.DataFrame,
    lineage: dict[str, Any],
    registered_name: str,
    alias: str | None,
) -> PackageResult:
    """Load the bundle in-process (failing early on any mismatch), infer the signature from
    its answer to `example`, log it to the active run, register it and set `alias`."""
    context = PythonModelContext(artifacts=artifacts, model_config=config.model_dump())
    probe = type(python_model)()
    probe.load_context(context)
    signature = bundle_signature(example, probe.predict(context, example))
    run = mlflow.active_run()
    with tempfile.TemporaryDirectory(prefix="simrec-code-") as code_folder:
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=python_model,
            artifacts=artifacts,
            model_config=config.model_dump(),
            signature=signature,
            input_example=example,
            pip_requirements=runtime_requirements(),
            code_paths=[str(_code_copy(Path(code_folder)))],
            metadata={"simrec": {"lineage": lineage, "bundle": config.model_dump()}},
        )
    registered = mlflow.register_model(info.model_uri, registered_name)
    client = mlflow.MlflowClient()
    for key, value in lineage.items():
        if value is not None:
            client.set_model_version_tag(registered_name, registered.version, key, str(value))
    if alias:
        client.set_registered_model_alias(registered_name, alias, registered.version)
    return PackageResult(
        run_id=run.info.run_id,
        model_uri=info.model_uri,
        registered_name=registered_name,
        version=int(registered.version),
        alias=alias,
        lineage=lineage,
    )


def register_bundle(
    model_dir: Path,
    catalog: CatalogBundle,
    config: BundleConfig,
    example: pd.DataFrame,
    lineage: dict[str, Any],
    registered_name: str,
    alias: str | None,
    step: str,
    tables: dict[str, TableVersion],
    tags: dict[str, str] | None = None,
    settings: Settings | None = None,
) -> PackageResult:
    """Log the bundle (`model_dir` + `catalog`) in a new run named `step`, with `tables` as its
    dataset inputs by context, register it and set `alias`."""
    with tempfile.TemporaryDirectory(prefix="simrec-bundle-") as workdir:
        artifacts = {EMBEDDING_MODEL_ARTIFACT: str(model_dir), **catalog.write(Path(workdir))}
        lineage_params = {
            f"lineage.{key}": value for key, value in lineage.items() if value is not None
        }
        with tracked_step(step, settings, tables, tags=tags, params=lineage_params):
            return log_bundle(
                EmbeddingSearchModel(), artifacts, config, example, lineage, registered_name, alias
            )


def package_run(
    settings: Settings,
    lake: Lakehouse,
    run_id: str,
    registered_name: str | None = None,
    alias: str | None = None,
    table_name: str | None = None,
    promote: bool = True,
    force: bool = False,
) -> PackageResult:
    """Bundle training run `run_id` as the deployable model, measure it, gate it.

    The catalog is embedded once, here, with the SavedModel the bundle serves: by default the
    train split of the run's training table, or with `table_name` every catalog row of that
    table (e.g. the IKEA items). The version is registered as `promotion.challenger_alias`,
    scored through its own pyfunc (figures on the package run and as version tags) and, with
    `promote`, moved to `alias` (default `serving.alias`) if the gate passes (or `force`).
    """
    setup_mlflow(settings.mlflow)
    trained_on = training_table(run_id)
    serving = settings.serving
    registered_name = registered_name or serving.registered_model
    alias = serving.alias if alias is None else (alias or None)
    config = bundle_config(settings)
    batch_size = settings.reindex.embed_batch_size
    started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="simrec-package-") as workdir:
        folder = Path(workdir)
        model_dir = export_embedding_model(
            load_embedding_model(run_id),
            folder / "embedding_model",
            settings.model.image_size,
            settings.model.channels,
        )
        table = trained_on if table_name is None else lake.pin(table_name)
        rows = lake.read(table.name, table.version)
        scope = CatalogScope.for_table(rows.column_names, settings)
        log.info("embedding the catalog of %s v%s", table.name, table.version)
        catalog = embed_catalog(
            scope.select(rows),
            saved_model_embedder(model_dir, batch_size),
            config,
            settings.index,
            metadata_columns(rows.column_names),
            serving.thumbnail_size,
            batch_size,
            keep_pixels=True,
        )
        # Evaluation's raw-pixel baseline searches these same rows, decoded the same way:
        # handed over rather than read and decoded again.
        decoded = DecodedItems(catalog.items[ITEM_ID_COLUMN].tolist(), catalog.pixels)
        images = example_images(rows, catalog.items[ITEM_ID_COLUMN].tolist())
        example = query_frame(images, [settings.recommend.k] * len(images))
        lineage = catalog_lineage(table, scope, catalog.index, training_run_id=run_id)
        package = register_bundle(
            model_dir,
            catalog,
            config,
            example,
            lineage,
            registered_name,
            settings.promotion.challenger_alias,
            step="package",
            tables={"training": trained_on, "catalog": table},
            tags={"simrec.training_run_id": run_id},
            settings=settings,
        )
    package = replace(package, timings={"package_s": time.perf_counter() - started})
    return evaluate_and_promote(
        settings, package, "model", alias if promote else None, force, decoded
    )


def evaluate_and_promote(
    settings: Settings,
    package: PackageResult,
    kind: str,
    alias: str | None,
    force: bool = False,
    decoded: DecodedItems | None = None,
) -> PackageResult:
    """Score the registered challenger through its pyfunc, log and tag the figures, then run
    the gate towards `alias` (None: stay challenger). `decoded`: the catalog's images as
    packaging decoded them, when it has them."""
    from simrec.evaluation.evaluate import evaluate_bundle, tag_version
    from simrec.evaluation.queries import NoQuerySetError
    from simrec.serving.promotion import promote

    version_uri = f"models:/{package.registered_name}/{package.version}"
    started = time.perf_counter()
    report = None
    try:
        report = evaluate_bundle(settings, version_uri, package.lineage, package.run_id, decoded)
    except NoQuerySetError as error:
        log.warning("%s is not evaluated: %s", version_uri, error)
    else:
        tag_version(package.registered_name, package.version, report)
    evaluated = time.perf_counter()
    promotion = None
    if alias:
        score = report.score if report is not None else None
        promotion = promote(
            settings,
            package.registered_name,
            package.version,
            alias,
            kind,
            force,
            challenger_score=score,
        )
    promoted = promotion is not None and promotion.promoted
    timings = {
        **package.timings,
        "evaluate_s": evaluated - started,
        "gate_s": time.perf_counter() - evaluated,
    }
    return replace(
        package,
        alias=alias if promoted else package.alias,
        evaluation=report,
        promotion=promotion,
        timings=timings,
    )


def served_model_uri(settings: Settings, lake: Lakehouse) -> str:
    """`models:/<serving.registered_model>@<serving.alias>`; when nothing is registered under
    it yet, the newest training run is packaged (and gated) first (a fresh workspace)."""
    setup_mlflow(settings.mlflow)
    serving = settings.serving
    model_uri = f"models:/{serving.registered_model}@{serving.alias}"
    try:
        resolve_version(model_uri)
    except BundleNotFoundError:
        package_run(settings, lake, latest_run_id(settings.mlflow.experiment))
    return model_uri
