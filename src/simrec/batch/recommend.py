"""The batch-recommend step: the k most similar catalog items of every row of a table,
computed on Spark with a registered bundle and written to a Delta table.

- The driver downloads the bundle from the registry once and ships it to the executors as one
  zip (`SparkContext.addFile`); each Python worker unpacks and loads it once and keeps it for
  every task it runs (Spark reuses Python workers), not once per batch.
- Rows reach the workers in Arrow batches (`mapInPandas`); images are decoded exactly like
  query images, embedded with the bundle's SavedModel and searched in its faiss index for
  k + 1 neighbours. The row's own id is dropped (a catalog item is trivially its own best
  match), leaving k; other items with identical images are kept, they are other products.
- Each task writes its parquet part under the output table's folder, then the driver commits
  all parts as one Delta version that replaces the previous recommendations (still readable
  by time travel). Results never pass through the driver, and readers never see a half-written
  table. The model and source table versions are columns of every row and the commit's
  metadata.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from simrec.config import Settings
from simrec.images import decode_batch
from simrec.index.scope import IMAGE_COLUMN, KEY_COLUMN, LABEL_COLUMN, SPLIT_COLUMN, CatalogScope
from simrec.lake.identity import resolve_recorded_table
from simrec.lake.tables import Lakehouse, TableVersion
from simrec.serving.bundle import LocalBundle, RegisteredVersion, download_bundle
from simrec.serving.pyfunc import EmbeddingSearchModel
from simrec.spark import read_table
from simrec.tracking import setup_mlflow

RESULT_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("rank", pa.int32()),
        ("recommended_item_id", pa.string()),
        ("distance", pa.float32()),
    ]
)
LINEAGE_SCHEMA = pa.schema(
    [
        ("model_name", pa.string()),
        ("model_version", pa.int32()),
        ("source_table", pa.string()),
        ("source_table_version", pa.int64()),
    ]
)
OUTPUT_SCHEMA = pa.schema([*RESULT_SCHEMA, *LINEAGE_SCHEMA])
_RESULT_DDL = "item_id string, rank int, recommended_item_id string, distance float"

# Bundles loaded in this Python worker, by archive name: loaded once, used by every task.
_SEARCHERS: dict[str, EmbeddingSearchModel] = {}


@dataclass(frozen=True)
class BatchResult:
    model: RegisteredVersion
    source: TableVersion
    output: TableVersion
    items: int  # rows recommended for
    rows: int  # rows written
    k: int
    seconds: float

    def summary(self) -> str:
        return (
            f"{self.output.name} v{self.output.version}: {self.rows} recommendations for "
            f"{self.items} items of {self.source.name} v{self.source.version} (k={self.k}, "
            f"{self.model.uri}) in {self.seconds:.1f} s ({self.output.path})"
        )


def load_searcher(folder: Path) -> EmbeddingSearchModel:
    """A downloaded bundle loaded the way serving loads it, unwrapped to its search model."""
    return mlflow.pyfunc.load_model(str(folder)).unwrap_python_model()


def recommend_batch(
    searcher: EmbeddingSearchModel,
    item_ids: list[str],
    images: list[bytes],
    k: int,
    batch_size: int,
) -> pd.DataFrame:
    """(item_id, rank, recommended_item_id, distance) rows: the k nearest items of each image,
    its own id left out. Images are decoded and embedded `batch_size` at a time, then searched
    all at once (faiss is several times faster per query on large query batches)."""
    if not item_ids:
        return RESULT_SCHEMA.empty_table().to_pandas()
    config = searcher.config
    embeddings = np.concatenate(
        [
            searcher.embed(
                decode_batch(
                    images[start : start + batch_size],
                    config.image_size,
                    config.channels,
                    config.max_image_pixels,
                    config.image_formats,
                )
            )
            for start in range(0, len(images), batch_size)
        ]
    )
    found, distances = searcher.search_embeddings(embeddings, k + 1)
    return _drop_self(item_ids, found, distances, k)


def _drop_self(
    item_ids: list[str], found: np.ndarray, distances: np.ndarray, k: int
) -> pd.DataFrame:
    queries, ranks, recommended, kept_distances = [], [], [], []
    for row, item_id in enumerate(item_ids):
        rank = 0
        for neighbour, distance in zip(found[row], distances[row], strict=True):
            if neighbour is None or neighbour == item_id:
                continue
            rank += 1
            queries.append(item_id)
            ranks.append(rank)
            recommended.append(neighbour)
            kept_distances.append(distance)
            if rank == k:
                break
    return pd.DataFrame(
        {
            "item_id": pd.Series(queries, dtype=object),
            "rank": np.asarray(ranks, dtype=np.int32),
            "recommended_item_id": pd.Series(recommended, dtype=object),
            "distance": np.asarray(kept_distances, dtype=np.float32),
        }
    )


def _worker_searcher(archive_name: str) -> EmbeddingSearchModel:
    searcher = _SEARCHERS.get(archive_name)
    if searcher is None:
        from pyspark import SparkFiles

        folder = Path(tempfile.mkdtemp(prefix="simrec-bundle-"))
        shutil.unpack_archive(SparkFiles.get(archive_name), folder)
        searcher = _SEARCHERS[archive_name] = load_searcher(folder)
    return searcher


def _recommend_partition(
    batches: Iterator[pd.DataFrame], archive_name: str, k: int, batch_size: int
) -> Iterator[pd.DataFrame]:
    """mapInPandas body, run on the executors."""
    searcher = _worker_searcher(archive_name)
    for batch in batches:
        item_ids = batch[KEY_COLUMN].astype(str).tolist()
        yield recommend_batch(searcher, item_ids, batch[IMAGE_COLUMN].tolist(), k, batch_size)


def _scope_filter(frame: DataFrame, scope: CatalogScope) -> DataFrame:
    if scope.split is not None:
        frame = frame.filter(F.col(SPLIT_COLUMN) == scope.split)
    if scope.labels is not None:
        frame = frame.filter(F.col(LABEL_COLUMN).isin(list(scope.labels)))
    return frame


def _source(
    lake: Lakehouse, bundle: LocalBundle, table_name: str | None, table_version: int | None
) -> TableVersion:
    """The model's own table (at the version its catalog reflects, unless told) or another,
    both under the configured lake.root: the path recorded at packaging is history (the lake
    may have moved). The model's own table must still be the Delta table it was built from."""
    lineage = bundle.lineage
    if table_name is None or table_name == lineage["source_table"]:
        resolve_recorded_table(
            lake, lineage["source_table"], lineage.get("source_table_id"), bundle.registered.uri
        )
        version = int(lineage["source_table_version"]) if table_version is None else table_version
        return lake.pin(lineage["source_table"], version)
    return lake.pin(table_name, table_version)


def batch_recommend(
    settings: Settings,
    spark: SparkSession,
    model_uri: str,
    table_name: str | None = None,
    table_version: int | None = None,
    output_table: str | None = None,
    k: int | None = None,
) -> BatchResult:
    """Recommendations for every row of `table_name` (default: the model's own table at the
    version its catalog reflects) into `output_table` under `lake.root`; see the module
    docstring. `batch.rows` picks the rows: `catalog` (the model's catalog rule) or `all`."""
    setup_mlflow(settings.mlflow)
    batch = settings.batch
    k = k or batch.k
    output_table = output_table or batch.output_table
    started = time.perf_counter()
    lake = Lakehouse(settings.lake.root)
    with tempfile.TemporaryDirectory(prefix="simrec-batch-") as workdir:
        bundle = download_bundle(model_uri, Path(workdir) / "bundle")
        source = _source(lake, bundle, table_name, table_version)
        if not 1 <= k <= bundle.config.max_k:
            raise ValueError(f"k must be from 1 to {bundle.config.max_k}, got {k}")
        scope = CatalogScope.from_lineage(bundle.lineage) if batch.rows == "catalog" else None
        archive_name = f"simrec-bundle-{uuid.uuid4().hex}"
        archive = shutil.make_archive(str(Path(workdir) / archive_name), "zip", bundle.folder)
        spark.sparkContext.addFile(archive)

        rows = read_table(spark, lake, source)
        if scope is not None:
            rows = _scope_filter(rows, scope)
        rows = rows.select(KEY_COLUMN, IMAGE_COLUMN)
        items = rows.count()
        rows = rows.repartition(batch.partitions or spark.sparkContext.defaultParallelism)
        recommendations = rows.mapInPandas(
            partial(
                _recommend_partition,
                archive_name=Path(archive).name,
                k=k,
                batch_size=batch.embed_batch_size,
            ),
            schema=_RESULT_DDL,
        ).select(
            "*",
            F.lit(bundle.registered.name).alias("model_name"),
            F.lit(bundle.registered.version).cast("int").alias("model_version"),
            F.lit(source.name).alias("source_table"),
            F.lit(source.version).cast("long").alias("source_table_version"),
        )
        staging = lake.path(output_table) / f"batch-{uuid.uuid4().hex}"
        recommendations.write.parquet(str(staging))
        files = sorted(staging.glob("part-*.parquet"))
        for leftover in [*staging.glob(".*.crc"), staging / "_SUCCESS"]:
            leftover.unlink(missing_ok=True)  # Hadoop bookkeeping; Delta tracks the parts
        output = lake.replace_with_files(
            output_table,
            files,
            OUTPUT_SCHEMA,
            description="simrec batch recommendations: the k most similar items of each item",
            commit_metadata={
                "simrec.model": bundle.registered.uri,
                "simrec.model_version": str(bundle.registered.version),
                "simrec.source_table": source.name,
                "simrec.source_table_path": source.path,
                "simrec.source_table_version": str(source.version),
                "simrec.k": str(k),
                "simrec.rows": batch.rows,
            },
        )
    return BatchResult(
        model=bundle.registered,
        source=source,
        output=output,
        items=items,
        rows=output.rows_added,
        k=k,
        seconds=time.perf_counter() - started,
    )
