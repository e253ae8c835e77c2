"""Batch feature tables on Spark: the same feature SQL files (transpiled from DuckDB's dialect by
pipelines/spark_sql.py), over the same inputs, into the same Parquet files.

The inputs are those of pipelines/features.py, as Spark views: `events` (the label left out when
it is known late), `labels` (with `label_known_at`), `snapshots`, the spec's reference tables and
the `hash_entity` function. Reference CSV files are read by DuckDB's sniffer and handed to Spark
as Arrow, so a column has the type it has in the DuckDB path; Parquet ones Spark reads itself.
The real-time tables are folded by the same Python function as in the DuckDB path (on the
driver: it is a per-user fold, not SQL).

Each table is written as ONE Parquet file (`<table>.parquet`, as DuckDB writes it; Feast, the
materialize window and the training fingerprint read that name): Spark writes one partition into
a temporary folder beside it and the file is moved into place, so the folder must be a path the
driver and every executor see (a shared mount on a cluster; see README).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from feastflow.event_log import events_glob, has_events, sql_string
from feastflow.privacy import hash_user_id
from feastflow.settings import Settings
from feastflow.spec import ModelSpec
from feastflow.store import spark_overlay
from pipelines.features import (
    event_log_connection,
    feature_sql_files,
    reference_table_paths,
    write_realtime_tables,
)
from pipelines.spark_sql import SparkSqlError, to_spark_sql

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def spark_session(settings: Settings) -> SparkSession:
    """The active Spark session, else one started with feature_store.spark.yaml's spark_conf
    (Feast's Spark store and engine then reuse it: one session per process)."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    conf = spark_overlay(settings)["offline_store"]["spark_conf"]
    session = SparkSession.builder.config(conf=SparkConf().setAll(list(conf.items()))).getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def register_inputs(spark: SparkSession, settings: Settings, spec: ModelSpec) -> None:
    """The views and function the use case's feature SQL reads (see the module docstring)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    log = spec.event_log
    events_dir = settings.events_dir(spec.name)
    if not has_events(events_dir):
        raise FileNotFoundError(f"the event log {events_dir} is empty: run `feastflow ingest` first")
    # A glob over the files, not the folder: no date=/hour= partition columns, as in DuckDB.
    # Cached: every feature query reads the log, and a log is many small hourly files.
    all_events = spark.read.parquet(events_glob(events_dir)).cache()
    all_events.createOrReplaceTempView("all_events")
    events = all_events
    delay_us = int(log.label_delay.total_seconds() * 1_000_000)
    if log.label is not None and log.label != log.item:
        if delay_us > 0:
            events = all_events.drop(log.label)
        labels = all_events.withColumn("label_known_at", F.timestamp_micros(
            F.unix_micros(F.col(log.timestamp)) + F.lit(delay_us)))
        labels.createOrReplaceTempView("labels")
    events.createOrReplaceTempView("events")
    ts = f"`{log.timestamp}`"
    spark.sql(f"""SELECT explode(sequence(date_trunc('DAY', min({ts})) + INTERVAL 1 DAY,
                                          date_trunc('DAY', max({ts})) + INTERVAL 1 DAY,
                                          INTERVAL 1 DAY)) AS snapshot_ts
                  FROM all_events""").cache().createOrReplaceTempView("snapshots")
    secret = settings.user_hash_secret
    spark.udf.register("hash_entity", lambda raw: None if raw is None else hash_user_id(raw, secret),
                       StringType())
    for name, path in reference_table_paths(settings, spec).items():
        if path.endswith(".parquet"):
            table = spark.read.parquet(path)
        else:
            arrow = duckdb.connect().execute(
                f"SELECT * FROM read_csv_auto({sql_string(path)})").to_arrow_table()
            table = spark.createDataFrame(arrow)
        table.createOrReplaceTempView(name)


def compute_feature_tables_on_spark(
    settings: Settings,
    spec: ModelSpec,
    on_table: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """What `compute_feature_tables` writes, with the feature SQL run on Spark."""
    out_dir = settings.feature_tables_dir(spec.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    spark = spark_session(settings)
    register_inputs(spark, settings, spec)
    rows: dict[str, int] = {}
    for sql_file in feature_sql_files(spec):
        name = sql_file.stem
        query = to_spark_sql(sql_file.read_text().strip().rstrip(";"), sql_file)
        rows[name] = _write_single_parquet(spark, query, sql_file, out_dir / f"{name}.parquet")
        if on_table is not None:
            on_table(name, rows[name])
    con = event_log_connection(settings.events_dir(spec.name), spec.event_log.timestamp)
    rows.update(write_realtime_tables(con, spec, out_dir, on_table))
    return rows


def _write_single_parquet(spark: SparkSession, query: str, sql_file: Path, final: Path) -> int:
    """Run the query, write its rows as one Parquet file at `final` (replaced atomically)."""
    from pyspark.errors import PySparkException

    staging = final.parent / f".{final.stem}.spark.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        frame = spark.sql(query)
        frame.coalesce(1).write.option("compression", "zstd").parquet(str(staging))
    except PySparkException as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise SparkSqlError(f"feature SQL {sql_file} failed on Spark: {e}") from e
    parts = sorted(staging.glob("part-*.parquet"))
    if len(parts) != 1:
        shutil.rmtree(staging, ignore_errors=True)
        raise SparkSqlError(f"feature SQL {sql_file}: Spark wrote {len(parts)} files, expected 1")
    os.replace(parts[0], final)
    shutil.rmtree(staging, ignore_errors=True)
    return int(duckdb.connect().execute(
        f"SELECT count(*) FROM {sql_string(final)}").fetchone()[0])
