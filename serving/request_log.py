"""A sampled log of served predictions, written to Parquet in the background (read by monitoring).

The hot path calls `PredictionLog.maybe_record(record)`: a random draw decides whether the
prediction is kept, and a kept record is appended to an in-memory buffer (a lock and an append,
about a microsecond). A daemon thread writes the buffer every `flush_seconds` (sooner when it is
half full) to

    <directory>/date=YYYY-MM-DD/hour=HH/part-<uuid>.parquet

partitioned by each record's `served_at` in UTC. A file is written under a hidden temporary name
(`.part-<uuid>.parquet.tmp`, skipped by pyarrow and pandas readers) in the same directory and then
renamed, so a reader never sees a half-written file. The schema is fixed (`SCHEMA`); timestamps are
timestamp[us, UTC].

Record fields (a dict; keep it unchanged once recorded, it is written later from another thread):

    request_id     str              the request's id (X-Request-ID or generated)
    served_at      datetime         when the answer was sent, UTC (naive values are taken as UTC);
                                    decides the partition
    request_ts     datetime         the time the request asked features "as of", UTC
    user_hash      str              a hash of the user id, never the raw id
    variant        str              champion, challenger, ...
    model_version  str              the registry version that scored (an int is converted)
    fallback       str | None       the fallback level that answered, None when the model did
    items          list[str]        the ranked items, best first
    scores         list[float]      their scores, aligned with items
    features       str              a JSON object: feature name -> list of values, one per candidate,
                                    as the caller gives it (a dict is serialized here, off the hot path)
    latency_ms     float            server-side latency of the request
    shadow         bool             True for a shadow scoring (logged only, never served)
    context        str | None       a JSON object: the request's context (monitoring replays the
                                    offline point-in-time features of the same request from it)

Nothing is lost silently: a record that does not fit the buffer, cannot be converted to the
schema, or cannot be written by `close()` is reported to `on_drop(n)` (e.g. a Prometheus counter)
and counted in `dropped`. A failing write is logged and its records go back to the buffer for the
next flush (still bounded by `max_buffer`, the oldest are dropped first).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, NotRequired, TypedDict

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

SCHEMA: Final = pa.schema([
    pa.field("request_id", pa.string(), nullable=False),
    pa.field("served_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("request_ts", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("user_hash", pa.string(), nullable=False),
    pa.field("variant", pa.string(), nullable=False),
    pa.field("model_version", pa.string(), nullable=False),
    pa.field("fallback", pa.string(), nullable=True),
    pa.field("items", pa.list_(pa.string()), nullable=False),
    pa.field("scores", pa.list_(pa.float64()), nullable=False),
    pa.field("features", pa.string(), nullable=False),
    pa.field("latency_ms", pa.float64(), nullable=False),
    pa.field("shadow", pa.bool_(), nullable=False),
    pa.field("context", pa.string(), nullable=True),
])
# pyarrow does not enforce nullable=False when building a table, so it is checked per record.
REQUIRED: Final = tuple(f.name for f in SCHEMA if not f.nullable)
_CONVERSION_ERRORS: Final = (pa.ArrowException, TypeError, ValueError, OverflowError)


class PredictionRecord(TypedDict):
    """One served prediction, as `maybe_record` expects it (see the module docstring)."""

    request_id: str
    served_at: datetime
    request_ts: datetime
    user_hash: str
    variant: str
    model_version: str
    fallback: str | None
    items: list[str]
    scores: list[float]
    features: str
    latency_ms: float
    shadow: bool
    context: NotRequired[str | None]


class PredictionLog:
    """Samples served predictions into a bounded buffer that a daemon thread writes to Parquet."""

    def __init__(self, directory: Path, sample: float, flush_seconds: float, max_buffer: int = 50_000,
                 on_drop: Callable[[int], None] | None = None) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"sample must be in [0, 1], got {sample}")
        if flush_seconds <= 0:
            raise ValueError(f"flush_seconds must be > 0, got {flush_seconds}")
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be >= 1, got {max_buffer}")
        self.directory = Path(directory)
        self.sample = sample
        self.flush_seconds = flush_seconds
        self.max_buffer = max_buffer
        self.on_drop = on_drop
        self.dropped = 0  # records lost for good, all causes
        self.written = 0  # rows written to Parquet
        self._buffer: list[Mapping[str, Any]] = []
        self._lock = threading.Lock()  # guards _buffer and the counters
        self._flush_lock = threading.Lock()  # one writer at a time: the thread, flush() or close()
        self._kick_at = max(1, max_buffer // 2)  # wake the writer early rather than drop records
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        # Started even when sample is 0: record() buffers without sampling (e.g. every shadow scoring).
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    # -- hot path ---------------------------------------------------------------------------------

    def sampled(self) -> bool:
        """Draw whether this prediction is logged (call before building an expensive record)."""
        return random.random() < self.sample

    def record(self, record: Mapping[str, Any]) -> bool:
        """Buffer a record without sampling; False (and counted as dropped) when full or closed."""
        with self._lock:
            size = len(self._buffer)
            if size < self.max_buffer and not self._closed:
                self._buffer.append(record)
                kept = True
            else:
                kept = False
        if not kept:
            self._drop(1)
        elif size + 1 == self._kick_at:
            self._kick.set()
        return kept

    def maybe_record(self, record: Mapping[str, Any]) -> bool:
        """Keep the record with probability `sample`; True when it was buffered."""
        if self.sample <= 0.0 or random.random() >= self.sample:
            return False
        return self.record(record)

    # -- writing ----------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records buffered and not yet written."""
        return len(self._buffer)

    def flush(self) -> int:
        """Write the buffer now; returns the rows written (failed writes are kept for the next try)."""
        with self._flush_lock:
            with self._lock:
                batch, self._buffer = self._buffer, []
            if not batch:
                return 0
            partitions, bad = _partition(batch)
            written = 0
            failed: list[Mapping[str, Any]] = []
            for (day, hour), records in partitions.items():
                table, good = _to_table(records)
                bad += len(records) - len(good)
                if not good:
                    continue
                try:
                    self._write(table, day, hour)
                except Exception:
                    # A full or read-only disk: keep the rows for the next flush rather than lose them.
                    log.exception("could not write %d sampled predictions to %s; will retry",
                                  table.num_rows, self.directory)
                    failed.extend(good)
                else:
                    written += table.num_rows
            if bad:
                log.error("dropped %d sampled predictions that do not fit the request log schema", bad)
            overflow = 0
            with self._lock:
                self.written += written
                if failed:
                    self._buffer = failed + self._buffer
                    overflow = len(self._buffer) - self.max_buffer
                    if overflow > 0:
                        del self._buffer[:overflow]  # the oldest go first
            if overflow > 0:
                log.error("request log buffer full after a failed write: dropped %d oldest records", overflow)
            self._drop(bad + max(overflow, 0))
            return written

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread and write what is buffered; what cannot be written is reported as dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._kick.set()
        self._thread.join(timeout)
        self.flush()
        with self._lock:
            left, self._buffer = len(self._buffer), []
        if left:
            log.error("request log closed with %d unwritten sampled predictions; dropped", left)
            self._drop(left)

    def __enter__(self) -> PredictionLog:
        """The log itself; leaving the block closes it."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close: stop the thread and flush."""
        self.close()

    def _run(self) -> None:
        while True:
            self._kick.wait(self.flush_seconds)
            self._kick.clear()
            if self._stop.is_set():
                return  # close() does the last flush
            try:
                self.flush()
            except Exception:  # the writer thread must outlive any bug in one flush
                log.exception("request log flush failed")

    def _write(self, table: pa.Table, day: str, hour: int) -> Path:
        """Write one partition file via a hidden temporary name and an atomic rename."""
        part_dir = self.directory / f"date={day}" / f"hour={hour:02d}"
        part_dir.mkdir(parents=True, exist_ok=True)
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = part_dir / f".{name}.tmp"
        try:
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, part_dir / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return part_dir / name

    def _drop(self, n: int) -> None:
        if n <= 0:
            return
        with self._lock:
            self.dropped += n
        if self.on_drop is not None:
            try:
                self.on_drop(n)
            except Exception:  # a broken metrics callback must not break serving
                log.exception("request log on_drop callback failed")


def _partition(batch: list[Mapping[str, Any]]) -> tuple[dict[tuple[str, int], list[dict[str, Any]]], int]:
    """Group records by (UTC date, hour) of served_at; returns the groups and the count of bad records."""
    parts: dict[tuple[str, int], list[dict[str, Any]]] = {}
    bad = 0
    for record in batch:
        try:
            row = _normalize(record)
            served = row["served_at"]
            served = served.astimezone(UTC) if served.tzinfo is not None else served
            parts.setdefault((f"{served:%Y-%m-%d}", served.hour), []).append(row)
        except Exception:
            bad += 1
    return parts, bad


def _normalize(record: Mapping[str, Any]) -> dict[str, Any]:
    """A copy fit for the schema: required fields present, features as JSON text, version as text."""
    row = dict(record)
    missing = [name for name in REQUIRED if row.get(name) is None]
    if missing:
        raise ValueError(f"missing {missing}")
    if not isinstance(row["served_at"], datetime):
        raise TypeError("served_at must be a datetime")
    if not isinstance(row["features"], str):
        row["features"] = orjson.dumps(row["features"], option=orjson.OPT_SERIALIZE_NUMPY).decode()
    if not isinstance(row["model_version"], str):
        row["model_version"] = str(row["model_version"])
    return row


def _to_table(rows: list[dict[str, Any]]) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The rows as a table of SCHEMA, and the rows that made it (those that do not convert are left out)."""
    try:
        return pa.Table.from_pylist(rows, schema=SCHEMA), rows
    except _CONVERSION_ERRORS:
        pass
    # Rare: find the offending rows one by one so one bad record cannot block the others forever.
    good = []
    for row in rows:
        try:
            pa.Table.from_pylist([row], schema=SCHEMA)
        except _CONVERSION_ERRORS:
            continue
        good.append(row)
    return pa.Table.from_pylist(good, schema=SCHEMA), good
