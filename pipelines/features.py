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

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from string import Template

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from duckdb import sqltypes

from feastflow.errors import InputError, SpecError
from feastflow.event_log import events_glob, has_events, sql_string
from feastflow.plugins import use_case_module
from feastflow.privacy import hash_user_id
from feastflow.realtime import EntityState, RealtimeFeatures
from feastflow.settings import Settings
from feastflow.spec import ModelSpec
from pipelines.feature_state import FeatureState, LogFingerprint, file_digest, inputs_digest, log_fingerprint


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


def use_case_connection(settings: Settings, spec: ModelSpec, loaded: bool = False,
                        through: datetime | None = None) -> duckdb.DuckDBPyConnection:
    """The connection the use case's feature SQL runs in (see the module docstring); with
    `loaded`, the event log is read once into memory (every table then reads it from there);
    with `through`, the daily snapshots (where the tables' rows stop) go on to the midnight at
    or after it."""
    log = spec.event_log
    con = event_log_connection(settings.events_dir(spec.name), log.timestamp)
    if loaded:  # one pass over the log's many small files instead of one per table
        con.execute("CREATE TEMP TABLE event_rows AS SELECT * FROM all_events")
        con.execute("CREATE OR REPLACE VIEW all_events AS SELECT * FROM event_rows")
    con.execute("CREATE TEMP TABLE all_snapshots AS SELECT * FROM snapshots")
    if through is not None:
        con.execute("""INSERT INTO all_snapshots SELECT unnest(generate_series(
            (SELECT max(snapshot_ts) FROM snapshots) + INTERVAL 1 DAY,
            date_trunc('day', ?::TIMESTAMPTZ - INTERVAL 1 MICROSECOND) + INTERVAL 1 DAY,
            INTERVAL 1 DAY))""", [through])
    con.execute("DROP TABLE snapshots")
    con.execute("CREATE VIEW snapshots AS SELECT * FROM all_snapshots")
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
    full: bool = False,
    through: datetime | None = None,
) -> dict[str, int]:
    """Write one Parquet table per SQL file and per real-time table (each atomically replaced),
    with DuckDB or, when `settings.offline_engine` is spark, Spark (pipelines/spark_features.py).

    Unless `full`, DuckDB redoes only what the events added since the last run change
    (pipelines/feature_state.py): unchanged tables are kept, the spec's incremental tables get
    their new snapshots, the real-time fold continues from the saved entity states.

    `through` continues the SQL tables' rows past the log's last day, to the midnight at or
    after it: a label-delayed window's rows there read only labels known before (a replay of
    days within the label delay). Rows of windows over recent events assume no more events.
    Never materialize rows later than the present from such tables.
    """
    if through is not None and settings.offline_engine == "spark":
        raise InputError("feature tables `through` a later day are computed with DuckDB only")
    if settings.offline_engine == "spark":
        from pipelines.spark_features import compute_feature_tables_on_spark

        return compute_feature_tables_on_spark(settings, spec, on_table)
    sql_files = feature_sql_files(spec)
    unknown = sorted(set(spec.features.incremental_tables) - {f.stem for f in sql_files})
    if unknown:
        raise SpecError(f"{spec.source_dir}/model.yaml: features.incremental_tables names "
                        f"{unknown}, which have no SQL file in {spec.sql_dir}")
    out_dir = settings.feature_tables_dir(spec.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    con = use_case_connection(settings, spec, loaded=True, through=through)
    state = FeatureState(out_dir)
    log = log_fingerprint(con, spec.event_log.timestamp, spec.event_log.event_id)
    shared = _shared_inputs(settings, spec)
    if through is not None:  # tables that stop elsewhere are other tables
        shared.append(f"through {through.isoformat()}")
    rows: dict[str, int] = {}
    for sql_file in sql_files:
        name = sql_file.stem
        rows[name] = _write_sql_table(con, spec, sql_file, out_dir, state, log, shared, full)
        if on_table is not None:
            on_table(name, rows[name])
    rows.update(write_realtime_tables(con, spec, out_dir, on_table,
                                      None if full else _Incremental(state, log, shared)))
    return rows


def _shared_inputs(settings: Settings, spec: ModelSpec) -> list[object]:
    """What every table of the use case is computed from, besides its own SQL and the log."""
    references = {name: file_digest(Path(path))
                  for name, path in reference_table_paths(settings, spec).items()}
    secret = hashlib.sha256(settings.user_hash_secret.encode()).hexdigest()
    return [spec.event_log.model_dump(mode="json"), references, secret]


def _write_sql_table(con: duckdb.DuckDBPyConnection, spec: ModelSpec, sql_file: Path,
                     out_dir: Path, state: FeatureState, log: LogFingerprint,
                     shared: list[object], full: bool) -> int:
    """Compute one SQL table (all of it, its new snapshots, or nothing); its row count."""
    name = sql_file.stem
    final = out_dir / f"{name}.parquet"
    tmp = out_dir / f".{name}.parquet.tmp"
    query = sql_file.read_text().strip().rstrip(";")
    inputs = inputs_digest(query, shared)
    known, day = (False, None) if full else state.dirty_day(name, inputs, log, final)
    if known and day is None:  # what a recompute would write
        return pq.ParquetFile(final).metadata.num_rows
    if known and name in spec.features.incremental_tables:
        # snapshots after the dirty day are recomputed; those up to it only saw older events
        since = f"TIMESTAMPTZ {sql_string(day or '')}"
        con.execute(f"CREATE OR REPLACE VIEW snapshots AS SELECT * FROM all_snapshots "
                    f"WHERE snapshot_ts > {since}")
        query = (f"({query})\nUNION ALL\n(SELECT * FROM read_parquet({sql_string(final)}) "
                 f"WHERE event_timestamp <= {since})")
    try:
        con.execute(f"COPY ({query}) TO {sql_string(tmp)} (FORMAT parquet, COMPRESSION zstd)")
    except duckdb.Error as e:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"feature SQL {sql_file} failed: {e}") from e
    finally:
        con.execute("CREATE OR REPLACE VIEW snapshots AS SELECT * FROM all_snapshots")
    os.replace(tmp, final)
    state.record(name, inputs, log)
    return pq.ParquetFile(final).metadata.num_rows


@dataclass(frozen=True)
class _Incremental:
    """What the real-time tables need to be computed incrementally."""

    state: FeatureState
    log: LogFingerprint
    shared: list[object]


REALTIME_RECORD = "realtime fold"  # the record of the real-time tables (written together)


def write_realtime_tables(con: duckdb.DuckDBPyConnection, spec: ModelSpec, out_dir: Path,
                          on_table: Callable[[str, int], None] | None = None,
                          incremental: _Incremental | None = None) -> dict[str, int]:
    """Fold the event log (`all_events` of con) through the use case's real-time functions into
    its real-time tables (none when the spec has no `realtime`); with `incremental`, continue
    the last run's fold when that gives the same tables (pipelines/feature_state.py)."""
    if spec.realtime is None:
        return {}
    realtime = RealtimeFeatures(spec)
    finals = {name: out_dir / f"{name}.parquet" for name in realtime.push_sources}
    rows: dict[str, int] | None = None
    if incremental is not None:
        rows = _continue_fold(con, spec, realtime, finals, incremental)
    if rows is None:
        columns = [realtime.entity_key, realtime.value_key, realtime.event_id_key,
                   realtime.timestamp_key]
        quoted = ", ".join(f'"{c}"' for c in columns)
        events = con.execute(f"SELECT {quoted} FROM all_events").df()
        folded, states = realtime.fold(events)
        if incremental is not None:
            incremental.state.forget(REALTIME_RECORD)
        rows = {}
        for name, frame in realtime.frames(folded).items():
            rows[name] = _replace_table(finals[name], pa.Table.from_pandas(frame,
                                                                          preserve_index=False))
        if incremental is not None:
            _record_fold(spec, realtime, incremental, states, len(events))
    for name, count in rows.items():
        if on_table is not None:
            on_table(name, count)
    return rows


def _realtime_inputs(spec: ModelSpec, realtime: RealtimeFeatures, shared: list[object]) -> str:
    module = Path(str(use_case_module(spec, realtime.spec.module).__file__))
    return inputs_digest(realtime.spec.model_dump(mode="json"), module.read_bytes(), shared)


def _record_fold(spec: ModelSpec, realtime: RealtimeFeatures, incremental: _Incremental,
                 states: dict[str, EntityState], folded: int) -> None:
    saved = incremental.state.save_entity_states(states)
    incremental.state.record(REALTIME_RECORD, _realtime_inputs(spec, realtime, incremental.shared),
                             incremental.log, entity_states=saved, folded_events=folded)
    incremental.state.drop_entity_states(saved)


def _continue_fold(con: duckdb.DuckDBPyConnection, spec: ModelSpec, realtime: RealtimeFeatures,
                   finals: dict[str, Path], incremental: _Incremental) -> dict[str, int] | None:
    """The real-time tables with the new events folded in after the saved states, or None when
    only a full fold gives the right tables."""
    if not realtime.spec.entity_history:  # a latest-row-per-entity table is not appended to
        return None
    state, now = incremental.state, incremental.log
    inputs = _realtime_inputs(spec, realtime, incremental.shared)
    known = [state.dirty_day(REALTIME_RECORD, inputs, now, final) for final in finals.values()]
    if not all(k for k, _ in known):
        return None
    day = known[0][1]
    if day is None:
        return {name: pq.ParquetFile(final).metadata.num_rows for name, final in finals.items()}
    states = state.entity_states(state.records[REALTIME_RECORD].get("entity_states", ""))
    if states is None or not all(s.window for s in states.values()):
        return None
    # The events of the dirty days folded before: up to each entity's last folded event.
    last = pa.table({"entity": list(states), "last_us": [s.window[-1][0] for s in states.values()],
                     "last_id": [s.window[-1][1] for s in states.values()]})
    con.register("folded_last", last)
    e, ts, eid = (f'e."{realtime.entity_key}"', f'e."{realtime.timestamp_key}"',
                  f'e."{realtime.event_id_key}"::VARCHAR')
    folded = (f"(epoch_us({ts}) < l.last_us OR (epoch_us({ts}) = l.last_us AND {eid} <= "
              f"l.last_id))")
    scope = (f"FROM all_events e LEFT JOIN folded_last l ON {e} = l.entity "
             f"WHERE {ts} >= TIMESTAMPTZ {sql_string(day)}")
    found = con.execute(f"SELECT count(*), coalesce(bit_xor(hash({eid})), 0) {scope} "
                        f"AND coalesce({folded}, false)").fetchone()
    count, xor = found if found else (0, 0)
    before = [v for d, v in state.log(REALTIME_RECORD).items() if d >= day]
    expected_xor = 0
    for _, x in before:
        expected_xor ^= x
    if count != sum(n for n, _ in before) or xor != expected_xor:
        return None  # an event came late, or one went: the fold starts over
    new_events = con.execute(
        f'SELECT {e} AS "{realtime.entity_key}", e."{realtime.value_key}", '
        f'e."{realtime.event_id_key}", {ts} AS "{realtime.timestamp_key}" {scope} '
        f"AND NOT coalesce({folded}, false)").df()
    con.unregister("folded_last")
    folded_rows, states = realtime.fold(new_events, states)
    state.forget(REALTIME_RECORD)
    rows = {}
    for name, frame in realtime.frames(folded_rows).items():
        old = pq.read_table(finals[name])
        new = pa.Table.from_pandas(frame, preserve_index=False).select(old.schema.names)
        rows[name] = _replace_table(finals[name], pa.concat_tables([old, new.cast(old.schema)])
                                    if len(frame) else old)
    _record_fold(spec, realtime, incremental, states, len(new_events))
    return rows


def _replace_table(final: Path, table: pa.Table) -> int:
    """Write `table` to `final` atomically; its row count."""
    tmp = final.with_name(f".{final.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, final)
    return table.num_rows
