"""Batch feature computation: the use case's feature SQL over its event log (DuckDB), and its
real-time tables by folding the event log through the function the stream processor calls.

What the SQL sees:
- `events`: the use case's event log (personal columns hashed). When the label is known only
  `label_delay` after the event, the label column is NOT in `events`: a feature cannot use a label
  before it was known by accident.
- `labels`: every column including the label, plus `label_known_at` (event time + label_delay);
  a feature computed from labels filters or stamps on `label_known_at`.
- `snapshots(snapshot_ts)`: one row per UTC day boundary from the first event day + 1 to the
  last + 1 (daily tables count what happened strictly before each).
- the spec's `features.reference_tables`, one view each (`${data}` is the shared data folder);
- `hash_entity(VARCHAR)`: the keyed hash ingest applies, to key reference tables like the log.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from string import Template

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from duckdb import sqltypes

from feastflow.event_log import events_glob, has_events, sql_string
from feastflow.privacy import hash_user_id
from feastflow.realtime import RealtimeFeatures
from feastflow.settings import Settings
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


def event_log_connection(events_dir: Path, timestamp: str = "timestamp"
                         ) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection in UTC with the whole event log as view `events` and daily `snapshots`."""
    if not has_events(events_dir):
        raise FileNotFoundError(f"the event log {events_dir} is empty: run `feastflow ingest` first")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE VIEW all_events AS SELECT * FROM read_parquet("
                f"{sql_string(events_glob(events_dir))}, hive_partitioning = false)")
    con.execute("CREATE VIEW events AS SELECT * FROM all_events")
    con.execute(
        f"""CREATE TABLE snapshots AS
        SELECT unnest(generate_series(min(date_trunc('day', "{timestamp}")) + INTERVAL 1 DAY,
                                      max(date_trunc('day', "{timestamp}")) + INTERVAL 1 DAY,
                                      INTERVAL 1 DAY)) AS snapshot_ts
        FROM all_events"""
    )
    return con


def use_case_connection(settings: Settings, spec: ModelSpec) -> duckdb.DuckDBPyConnection:
    """The connection the use case's feature SQL runs in (see the module docstring)."""
    log = spec.event_log
    con = event_log_connection(settings.events_dir(spec.name), log.timestamp)
    delay_us = int(log.label_delay.total_seconds() * 1_000_000)
    label = log.label
    if label is not None and label != log.item:
        hidden = f" EXCLUDE (\"{label}\")" if delay_us > 0 else ""
        con.execute(f"CREATE OR REPLACE VIEW events AS SELECT *{hidden} FROM all_events")
        con.execute(f"""CREATE VIEW labels AS SELECT *, "{log.timestamp}" + to_microseconds(
            {delay_us}) AS label_known_at FROM all_events""")
    secret = settings.user_hash_secret
    con.create_function("hash_entity", lambda raw: None if raw is None else hash_user_id(raw, secret),
                        [sqltypes.VARCHAR], sqltypes.VARCHAR, null_handling="special")
    for name, path in reference_table_paths(settings, spec).items():
        reader = "read_parquet" if path.endswith(".parquet") else "read_csv_auto"
        con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM {reader}({sql_string(path)})')
    return con


def reference_table_paths(settings: Settings, spec: ModelSpec) -> dict[str, str]:
    """The spec's reference tables: view name -> file (`${data}` resolved); each must exist."""
    return {name: str(reference_table_path(settings, spec, name))
            for name in spec.features.reference_tables}


def reference_table_path(settings: Settings, spec: ModelSpec, name: str) -> Path:
    """The file of one of the spec's reference tables (`${data}` is the shared data folder)."""
    template = spec.features.reference_tables[name]
    path = Path(Template(template).safe_substitute(data=str(settings.data_dir)))
    if not path.is_file():
        raise FileNotFoundError(f"reference table {name!r} of {spec.name}: no file {path} "
                                "(set FEASTFLOW_DATA_DIR to the shared data folder)")
    return path


def compute_feature_tables(
    settings: Settings,
    spec: ModelSpec,
    on_table: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Write one Parquet table per SQL file and per real-time table (each atomically replaced),
    with DuckDB or, when `settings.offline_engine` is spark, Spark (pipelines/spark_features.py)."""
    if settings.offline_engine == "spark":
        from pipelines.spark_features import compute_feature_tables_on_spark

        return compute_feature_tables_on_spark(settings, spec, on_table)
    out_dir = settings.feature_tables_dir(spec.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    con = use_case_connection(settings, spec)
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
    rows.update(write_realtime_tables(con, spec, out_dir, on_table))
    return rows


def write_realtime_tables(con: duckdb.DuckDBPyConnection, spec: ModelSpec, out_dir: Path,
                          on_table: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Fold the event log (`all_events` of con) through the use case's real-time functions into
    its real-time tables (none when the spec has no `realtime`)."""
    rows: dict[str, int] = {}
    if spec.realtime is None:
        return rows
    realtime = RealtimeFeatures(spec)
    columns = [realtime.entity_key, realtime.value_key, realtime.event_id_key,
               realtime.timestamp_key]
    quoted = ", ".join(f'"{c}"' for c in columns)
    log = con.execute(f"SELECT {quoted} FROM all_events").df()
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
