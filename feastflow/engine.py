"""A Feast batch materialization engine: DuckDB reads the latest rows, the fast writer stores them.

Feast's local engine reads every row of the window into pandas, sorts and deduplicates them
there, turns each value into a protobuf object and writes through `online_write_batch`: memory
grows with the table and each row costs tens of microseconds. For each feature view this engine:

1. asks DuckDB for the latest row per entity key in [start, end] (event time, then created
   time, nulls last: what Feast keeps), streamed as Arrow record batches (DuckDB spills to disk
   past `memory_limit`, so memory does not grow with the table);
2. incremental (with `state_dir`, into Redis or the embedded profile's SQLite): drops the rows
   whose key and values are those the previous run wrote (a 64-bit hash of each, kept per view
   under `state_dir`, vouched for by a token the store itself holds);
3. writes them with `feastflow.online_writer.RedisOnlineWriter` (Feast's exact Redis layout,
   newer wins, pipelined, `connections` in parallel), into the embedded profile's SQLite with
   `feastflow.sqlite_writer.SqliteOnlineWriter` (Feast's exact SQLite rows, one executemany a
   batch), or, for any other online store, through that store's own `online_write_batch`;
4. records the run: the new state file, then the store's token that vouches for it, then a line
   in `state_dir/runs.jsonl`. An interrupted run changes neither, so the next run writes again
   every row the last recorded run did not; each row is one atomic write (SQLite: one
   transaction a batch), so no entity is ever half-written. `feast apply` deleting a view
   deletes its token: a view added again later is written whole.

What it does not handle (transformations, aggregations, sources other than local Parquet,
`disable_event_timestamp`, views without entities) goes to Feast's own local engine. Use it with

    batch_engine:
      type: feastflow.engine.FeastflowComputeEngine

in feature_store.yaml; `batch_engine: local` switches back to Feast's engine.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast

import duckdb
import pyarrow as pa
import redis
from feast import Entity, FeatureView
from feast.infra.common.materialization_job import MaterializationJobStatus, MaterializationTask
from feast.infra.compute_engines.base import ComputeEngine
from feast.infra.compute_engines.local.compute import LocalComputeEngine
from feast.infra.compute_engines.local.job import LocalMaterializationJob
from feast.infra.online_stores.sqlite import SqliteOnlineStore
from feast.infra.registry.base_registry import BaseRegistry
from feast.repo_config import FeastConfigBaseModel
from feast.utils import _convert_arrow_to_proto, _get_column_names
from pydantic import StrictBool, StrictInt, StrictStr

from feastflow.errors import InputError
from feastflow.offline_store import _names, _q, _reads_directly, latest_rows_sql
from feastflow.online_writer import RedisOnlineWriter, WriteLayout, WriteResult
from feastflow.sqlite_writer import SqliteOnlineWriter

__all__ = ["ENGINE_KEY_PREFIX", "FeastflowComputeEngine", "FeastflowComputeEngineConfig",
           "MaterializeRun"]

# The engine's own bookkeeping keys in the online Redis (which run's record is current), outside
# Feast's layout: Feast never scans, but a dump of "every feature hash" must leave them out.
ENGINE_KEY_PREFIX = b"feastflow:materialized:"

log = logging.getLogger(__name__)
KEY_HASH, ROW_HASH = "__key_hash", "__row_hash"


class FeastflowComputeEngineConfig(FeastConfigBaseModel):
    """Options of FeastflowComputeEngine (`batch_engine:` in feature_store.yaml)."""

    type: StrictStr = "feastflow.engine.FeastflowComputeEngine"
    connections: StrictInt = 2  # parallel Redis connections
    batch_rows: StrictInt = 20_000  # rows per pipelined round trip
    atomic: StrictBool = False  # a Lua script per key instead of Feast's two round trips
    state_dir: StrictStr | None = None  # where runs are recorded; None: every run writes all
    memory_limit: StrictStr = "256MB"  # DuckDB's, past which it spills to disk


@dataclass(frozen=True)
class MaterializeRun:
    """What one view's materialization read and wrote (a line of runs.jsonl)."""

    project: str
    view: str
    start: str
    end: str
    rows: int  # latest rows in the window
    changed: int  # of them, not written by the previous run
    written: int  # of them, newer than what the store held
    seconds: float
    engine: str  # "redis", "sqlite" (the fast writers) or the online store's own write


class FeastflowComputeEngine(ComputeEngine):
    """Materialization through DuckDB and the fast online writer (see the module docstring)."""

    def __init__(self, *, connections: int = 2, batch_rows: int = 20_000, atomic: bool = False,
                 state_dir: str | None = None, memory_limit: str = "256MB",
                 **kwargs: Any) -> None:
        kwargs.pop("type", None)
        super().__init__(**kwargs)
        self.connections = connections
        self.batch_rows = batch_rows
        self.atomic = atomic
        self.state_dir = Path(state_dir).expanduser() if state_dir else None
        self.memory_limit = memory_limit
        self.feast_engine = LocalComputeEngine(**kwargs)
        self.runs: list[MaterializeRun] = []

    def update(self, project: str, views_to_delete: Sequence[Any], views_to_keep: Sequence[Any],
               entities_to_delete: Sequence[Entity], entities_to_keep: Sequence[Entity]) -> None:
        """Forget what was written for the deleted views (the store drops their rows)."""
        self._forget(project, views_to_delete)

    def teardown_infra(self, project: str, fvs: Sequence[Any], entities: Sequence[Entity]) -> None:
        """Forget what was written for the views torn down."""
        self._forget(project, fvs)

    def _forget(self, project: str, views: Sequence[Any]) -> None:
        if self.state_dir is None or not views:
            return
        if isinstance(self.online_store, SqliteOnlineStore) and not Path(
                SqliteOnlineStore._get_db_path(self.repo_config)).exists():
            return  # torn down, tokens and all: connecting would create an empty file again
        tokens = self._tokens(self._redis_writer())
        if tokens is not None:
            tokens.delete([_token_key(project, view.name) for view in views])

    def _materialize_one(self, registry: BaseRegistry, task: MaterializationTask,
                         **kwargs: Any) -> LocalMaterializationJob:
        view = task.feature_view
        job_id = f"{view.name}-{task.start_time}-{task.end_time}"
        reason = _unsupported(task)
        if reason:
            log.info("materializing %s with Feast's local engine: %s", view.name, reason)
            return self.feast_engine._materialize_one(registry, task, **kwargs)
        try:
            self.runs.append(self._materialize(registry, task))
        except Exception as e:  # Feast raises the job's error to the caller
            return LocalMaterializationJob(job_id, MaterializationJobStatus.ERROR, e)
        return LocalMaterializationJob(job_id, MaterializationJobStatus.SUCCEEDED)

    def _materialize(self, registry: BaseRegistry, task: MaterializationTask) -> MaterializeRun:
        started = time.perf_counter()
        view: FeatureView = task.feature_view
        entities = [registry.get_entity(name, task.project) for name in view.entities]
        keys, features, ts_col, created_col = _get_column_names(view, entities)
        source = view.batch_source
        if source is None:
            raise ValueError(f"feature view {view.name!r} has no batch source to materialize")
        mapping = source.field_mapping or {}
        order = [ts_col, *([created_col] if created_col else [])]
        latest = latest_rows_sql(self.repo_config, source, keys, features, order,
                                 (task.start_time, task.end_time))
        named = ", ".join(f"{_q(c)} AS {_q(mapping.get(c, c))}" for c in [*keys, *features])
        times = ", ".join(_q(c) for c in [ts_col, *([created_col] if created_col else [])])
        query = f"SELECT {named}, {times} FROM ({latest})"
        out_keys = [mapping.get(c, c) for c in keys]
        writer = self._redis_writer()
        tokens = self._tokens(writer) if self.state_dir is not None else None
        state = (_State(self.state_dir, task.project, view.name, tokens)
                 if self.state_dir is not None and tokens is not None else None)
        with _duckdb(self.memory_limit, self.state_dir) as con:
            if state is None:
                rows, changed = -1, -1
                batches = _batches(con, query, self.batch_rows)
            else:
                rows, changed, batches = state.changed(con, query, out_keys, created_col,
                                                       self.batch_rows)
            if writer is not None:
                with writer:
                    result = writer.write(WriteLayout.from_view(view, self.repo_config), batches,
                                          timestamp_column=ts_col, unique_keys=True)
                    if state is not None:
                        state.commit(con)
            else:
                result = self._write_through_store(view, entities, batches)
                if state is not None:
                    state.commit(con)
        if rows < 0:
            rows = changed = result.rows
        run = MaterializeRun(task.project, view.name, _iso(task.start_time), _iso(task.end_time),
                             rows, changed, result.written, round(time.perf_counter() - started, 3),
                             "redis" if writer is not None else "sqlite" if self._fast_sqlite()
                             else type(self.online_store).__name__)
        if self.state_dir is not None:
            _record(self.state_dir, run)
        return run

    def _redis_writer(self) -> RedisOnlineWriter | None:
        config = self.repo_config.online_store
        if type(config).__name__ != "RedisOnlineStoreConfig" or str(
                getattr(config.redis_type, "value", config.redis_type)) != "redis":
            return None
        try:
            return RedisOnlineWriter.from_repo_config(
                self.repo_config, atomic=self.atomic, connections=self.connections,
                batch_rows=self.batch_rows)
        except InputError as e:  # TLS: the store's own writer (Feast's), fed the latest rows
            log.info("materializing through the online store's own writer: %s", e)
            return None

    def _tokens(self, writer: RedisOnlineWriter | None) -> _Tokens | None:
        """Where the store keeps the tokens vouching for the state files; None: no state (every
        run writes every row): expiring Redis keys, or a store other than Redis and SQLite."""
        if writer is not None:
            return None if writer.key_ttl_seconds else _RedisTokens(_client(writer))
        if isinstance(self.online_store, SqliteOnlineStore):  # its own connection and file
            return _SqliteTokens(self.online_store._get_conn(self.repo_config))
        return None

    def _fast_sqlite(self) -> bool:
        return isinstance(self.online_store, SqliteOnlineStore) and SqliteOnlineWriter.supports(
            self.repo_config)

    def _write_through_store(self, view: FeatureView, entities: list[Entity],
                             batches: Iterator[pa.RecordBatch]) -> WriteResult:
        # The embedded profile's SQLite: Feast's layout, one executemany a batch; any other
        # store (or SQLite with vectors or value_num): its own writer, fed the latest rows only.
        if self._fast_sqlite():
            conn = cast(SqliteOnlineStore, self.online_store)._get_conn(self.repo_config)
            return SqliteOnlineWriter(conn, self.repo_config).write(view, batches)
        join_keys = {col.name: col.dtype.to_value_type() for col in view.entity_columns}
        total = WriteResult()
        for batch in batches:
            rows = _convert_arrow_to_proto(batch, view, join_keys)
            self.online_store.online_write_batch(self.repo_config, view, rows, None)
            total += WriteResult(batch.num_rows, batch.num_rows)
        return total


def _unsupported(task: MaterializationTask) -> str | None:
    """Why Feast's own engine must run this task, or None."""
    view = task.feature_view
    if not task.only_latest or task.disable_event_timestamp:
        return "all rows or no event time asked for"
    if getattr(view, "aggregations", None) or getattr(view, "feature_transformation", None):
        return "the view transforms or aggregates"
    if not view.online:
        return "the view is not online"
    if not _reads_directly(view.batch_source):
        return "its source is not a local Parquet file"
    if not view.entity_columns:
        return "the view has no entities"
    return None


class _Tokens(Protocol):
    """A store's own record of which state file describes what it holds."""

    def get(self, key: bytes) -> bytes | None: ...

    def set(self, key: bytes, token: bytes) -> None: ...

    def delete(self, keys: list[bytes]) -> None: ...


class _RedisTokens:
    """Tokens as plain keys of the online Redis (ENGINE_KEY_PREFIX)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def get(self, key: bytes) -> bytes | None:
        """The token stored under key."""
        return cast(bytes | None, self.client.get(key))

    def set(self, key: bytes, token: bytes) -> None:
        """Store the token."""
        self.client.set(key, token)

    def delete(self, keys: list[bytes]) -> None:
        """Drop these tokens."""
        if keys:
            self.client.delete(*keys)


class _SqliteTokens:
    """Tokens in a table of the SQLite online store's own database file: a new or replaced file
    has none, so its first run writes every row."""

    TABLE = "feastflow_materialized"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        with conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self.TABLE} "
                         "(key BLOB PRIMARY KEY, token BLOB NOT NULL)")

    def get(self, key: bytes) -> bytes | None:
        """The token stored under key."""
        row = self.conn.execute(f"SELECT token FROM {self.TABLE} WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def set(self, key: bytes, token: bytes) -> None:
        """Store the token."""
        with self.conn:
            self.conn.execute(f"INSERT INTO {self.TABLE} (key, token) VALUES (?, ?) "
                              "ON CONFLICT(key) DO UPDATE SET token = excluded.token", (key, token))

    def delete(self, keys: list[bytes]) -> None:
        """Drop these tokens."""
        with self.conn:
            self.conn.executemany(f"DELETE FROM {self.TABLE} WHERE key = ?",
                                  [(key,) for key in keys])


def _token_key(project: str, view: str) -> bytes:
    return ENGINE_KEY_PREFIX + f"{project}:{view}".encode()


class _State:
    """The hashes of the rows the last run wrote for one view, vouched for by a token the store
    holds.

    The state file is named after a token that the run also stores in the online store: a store
    that lost its data (flushed, restarted without persistence, another database, a new SQLite
    file) has no token or another, and then every row is written again.
    """

    def __init__(self, state_dir: Path, project: str, view: str, tokens: _Tokens) -> None:
        self.folder = state_dir / project
        self.view = view
        self.tokens = tokens
        self.token_key = _token_key(project, view)
        self.previous: Path | None = None

    def changed(self, con: duckdb.DuckDBPyConnection, query: str, keys: list[str],
                created: str | None, batch_rows: int
                ) -> tuple[int, int, Iterator[pa.RecordBatch]]:
        """Rows in the window, rows changed since the last run, and the changed rows.

        A row is unchanged when its keys, values and event time are the same: its created time
        is left out (recomputing a table stamps every row anew without changing it).
        """
        hashed = f"* EXCLUDE ({_q(created)})" if created else "*"
        con.execute(f"CREATE OR REPLACE TEMP TABLE latest AS SELECT *, hash({_names(keys)}) AS "
                    f"{KEY_HASH}, hash(*COLUMNS({hashed})) AS {ROW_HASH} FROM ({query})")
        rows = _count(con, "SELECT count(*) FROM latest")
        token = self.tokens.get(self.token_key)
        candidate = self.folder / f"{self.view}.{token.decode()}.parquet" if token else None
        self.previous = candidate if candidate is not None and candidate.exists() else None
        changed_sql = f"SELECT * EXCLUDE ({KEY_HASH}, {ROW_HASH}) FROM latest"
        if self.previous is not None:
            changed_sql += (f" AS l ANTI JOIN read_parquet({_literal(self.previous)}) AS s "
                            f"ON l.{KEY_HASH} = s.key_hash AND l.{ROW_HASH} = s.row_hash")
        changed = _count(con, f"SELECT count(*) FROM ({changed_sql})")
        return rows, changed, _batches(con, changed_sql, batch_rows)

    def commit(self, con: duckdb.DuckDBPyConnection) -> None:
        """Record what this run wrote: new state file first, then the token that vouches for it."""
        token = uuid.uuid4().hex
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"{self.view}.{token}.parquet"
        staged = self.folder / f".{self.view}.{token}.parquet.tmp"
        current = f"SELECT {KEY_HASH} AS key_hash, {ROW_HASH} AS row_hash FROM latest"
        if self.previous is not None:  # keys outside this window keep their previous rows
            current += (f" UNION ALL SELECT s.key_hash, s.row_hash FROM read_parquet("
                        f"{_literal(self.previous)}) AS s ANTI JOIN latest AS l "
                        f"ON s.key_hash = l.{KEY_HASH}")
        con.execute(f"COPY ({current}) TO {_literal(staged)} (FORMAT parquet)")
        os.replace(staged, target)
        self.tokens.set(self.token_key, token.encode())
        for old in self.folder.glob(f"{self.view}.*.parquet"):
            if old != target:
                old.unlink(missing_ok=True)


def _client(writer: RedisOnlineWriter) -> redis.Redis:
    target = writer.target
    return redis.Redis(host=target.host, port=target.port, db=target.db,
                       password=target.password, username=target.username, ssl=target.ssl)


class _duckdb:
    """A private DuckDB with a memory limit and a spill folder, closed on exit."""

    def __init__(self, memory_limit: str, state_dir: Path | None) -> None:
        self.memory_limit = memory_limit
        self.spill = tempfile.TemporaryDirectory(prefix="feastflow-duckdb-", dir=state_dir if (
            state_dir and state_dir.exists()) else None)

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute(f"SET memory_limit = {_literal(self.memory_limit)}")
        self.con.execute(f"SET temp_directory = {_literal(self.spill.name)}")
        self.con.execute("SET preserve_insertion_order = false")
        # DuckDB prefetches a whole Parquet row group per thread in one block, outside what it
        # can spill (a 1 M-row group of 23 columns: 177 MiB): read it column chunk by chunk.
        self.con.execute("SET disable_parquet_prefetching = true")
        return self.con

    def __exit__(self, *exc: object) -> None:
        self.con.close()
        self.spill.cleanup()


def _batches(con: duckdb.DuckDBPyConnection, sql: str, rows: int) -> Iterator[pa.RecordBatch]:
    reader = con.sql(sql).to_arrow_reader(rows)
    yield from reader


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    found = con.execute(sql).fetchall()
    return int(found[0][0]) if found else 0


def _literal(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _iso(moment: datetime) -> str:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def _record(state_dir: Path, run: MaterializeRun) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "runs.jsonl", "a", encoding="utf-8") as out:
        out.write(json.dumps(asdict(run)) + "\n")
