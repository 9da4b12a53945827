"""Spark session on the configured master, and Delta snapshots read as Spark DataFrames."""

from __future__ import annotations

import os
import sys

from pyspark.sql import DataFrame, SparkSession

from simrec.config import SparkSettings
from simrec.lake.tables import Lakehouse, TableVersion


def get_spark(settings: SparkSettings) -> SparkSession:
    """The active session, or a new one on `settings.master` (loopback-bound for local runs)."""
    if settings.local_ip:
        # Without this local Spark binds the external interface.
        os.environ.setdefault("SPARK_LOCAL_IP", settings.local_ip)
    if settings.master.startswith("local"):
        # Python workers (pandas UDFs) must run this interpreter, whose packages they import;
        # otherwise Spark starts whatever `python3` is first on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(settings.master).appName(settings.app_name)
    if settings.local_ip:
        builder = builder.config("spark.driver.bindAddress", settings.local_ip).config(
            "spark.driver.host", settings.local_ip
        )
    for key, value in settings.conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def read_table(spark: SparkSession, lake: Lakehouse, table: TableVersion) -> DataFrame:
    """`table` at its pinned version: the parquet files of that snapshot, never the folder
    (which also holds files that later versions removed)."""
    files = lake.file_uris(table.name, table.version)
    if not files:
        raise ValueError(f"table {table.name!r} v{table.version} has no data files")
    return spark.read.parquet(*files)
