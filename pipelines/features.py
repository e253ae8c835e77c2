"""Batch feature computation: the use case's feature SQL over the event log (DuckDB), and its
real-time tables by folding the event log through the function the stream processor calls."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from feastflow.event_log import events_glob, has_events, sql_string
from feastflow.realtime import RealtimeFeatures
from feastflow.spec import ModelSpec


def feature_sql_files(spec: ModelSpec) -> list[Path]:
    """The use case's batch feature SQL files, one per table, in name order."""
    files = sorted(spec.sql_dir.glob("*.sql"))
    if not files:
        raise FileNotFoundError(f"no feature SQL files in {spec.sql_dir}")
    return files


def feature_table_names(spec: ModelSpec) -> list[str]:
    """Every table `compute_feature_tables` writes: one per SQL file, then the real-time ones."""
    names = [f.stem for f in feature_sql_files(spec)]
    if spec.realtime is not None:
        names += list(RealtimeFeatures(spec).push_sources)
    return names


def event_log_connection(events_dir: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection in UTC with the event log as view `events` and daily `snapshots`."""
    if not has_events(events_dir):
        raise FileNotFoundError(f"the event log {events_dir} is empty: run `feastflow ingest` first")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        f"CREATE VIEW events AS SELECT * FROM read_parquet({sql_string(events_glob(events_dir))}, "
        "hive_partitioning = false)"
    )
    con.execute(
        """CREATE TABLE snapshots AS
        SELECT unnest(generate_series(min(date_trunc('day', timestamp)) + INTERVAL 1 DAY,
                                      max(date_trunc('day', timestamp)) + INTERVAL 1 DAY,
                                      INTERVAL 1 DAY)) AS snapshot_ts
        FROM events"""
    )
    return con


def compute_feature_tables(
    spec: ModelSpec,
    events_dir: Path,
    out_dir: Path,
    on_table: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Write one Parquet table per SQL file and per real-time table (each atomically replaced)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    con = event_log_connection(events_dir)
    rows: dict[str, int] = {}
    for sql_file in feature_sql_files(spec):
        name = sql_file.stem
        final = out_dir / f"{name}.parquet"
        tmp = out_dir / f".{name}.parquet.tmp"
        query = sql_file.read_text().strip().rstrip(";")
        try:
            con.execute(f"COPY ({query}) TO {sql_string(tmp)} (FORMAT parquet, COMPRESSION zstd)")
        except duckdb.Error as e:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"feature SQL {sql_file} failed: {e}") from e
        os.replace(tmp, final)
        rows[name] = con.execute(f"SELECT count(*) FROM {sql_string(final)}").fetchone()[0]
        if on_table is not None:
            on_table(name, rows[name])
    if spec.realtime is not None:
        realtime = RealtimeFeatures(spec)
        log = con.execute(
            f"SELECT {realtime.entity_key}, {realtime.item_key}, event_id, timestamp FROM events"
        ).df()
        for name, frame in realtime.batch_tables(log).items():
            final = out_dir / f"{name}.parquet"
            tmp = out_dir / f".{name}.parquet.tmp"
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp,
                           compression="zstd")
            os.replace(tmp, final)
            rows[name] = len(frame)
            if on_table is not None:
                on_table(name, rows[name])
    return rows
