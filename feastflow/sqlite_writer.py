"""Feast's SQLite online layout (the embedded profile), written from Arrow batches.

Feast's `SqliteOnlineStore.online_write_batch` takes one protobuf object per value, built row by
row from the batch, and runs one INSERT per (entity, feature): about 100 µs a row of 2-3
features here (the embedded nightly job's materialize spent 13 s on 122 k rows). This writer
stores the same rows with one `executemany` per batch:

- `entity_key`: Feast's entity key serialization (version 3), from `online_writer.encode_keys`;
- `value`: the serialized `feast.types.Value`, from `online_writer.encode_values` (the bytes
  Feast's Redis store holds, proven equal to Feast's own);
- `value_text`: what Feast's `extract_text_and_num` derives from that same Value;
- `event_ts`, `created_ts`: the times as Feast's sqlite3 adapter stores them (whole seconds of
  the naive UTC time read as local time: `int(datetime.timestamp())`, as Feast does);
- the same upsert (`ON CONFLICT(entity_key, feature_name) DO UPDATE`), one transaction a batch,
  so a row is written whole or not at all.

A store with vector search, `value_num` (enable_openai_compatible_store) or another entity key
serialization version is left to Feast's writer (`SqliteOnlineWriter.supports` says which).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
from feast import FeatureView
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.infra.online_stores.sqlite import _quote_id, _table_id
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig

from feastflow.online_writer import (
    WriteLayout,
    WriteResult,
    encode_keys,
    encode_values,
    timestamp_micros,
)

_EPOCH = datetime(1970, 1, 1)  # naive, as Feast hands datetimes to sqlite3 (to_naive_utc)


class SqliteOnlineWriter:
    """Writes a view's rows into Feast's SQLite online table through one connection."""

    def __init__(self, conn: sqlite3.Connection, config: RepoConfig) -> None:
        self.conn = conn
        self.config = config

    @staticmethod
    def supports(config: RepoConfig) -> bool:
        """Whether this writer produces exactly what Feast's would for this store."""
        store = config.online_store
        return (config.entity_key_serialization_version == 3
                and not getattr(store, "vector_enabled", False)
                and not getattr(store, "enable_openai_compatible_store", False))

    def write(self, view: FeatureView, batches: Iterable[pa.RecordBatch]) -> WriteResult:
        """Upsert every row of the batches (the latest per key: each key once)."""
        layout = WriteLayout.from_view(view, self.config)
        source = view.batch_source
        if source is None:
            raise ValueError(f"feature view {view.name!r} has no batch source")
        table = _quote_id(_table_id(self.config.project, view, bool(getattr(
            self.config.registry, "enable_online_feature_view_versioning", False))))
        upsert = (f"INSERT INTO {table} (entity_key, feature_name, value, value_text, event_ts, "
                  "created_ts) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) "
                  "DO UPDATE SET value = excluded.value, value_text = excluded.value_text, "
                  "event_ts = excluded.event_ts, created_ts = excluded.created_ts;")
        total = WriteResult()
        for batch in batches:
            if batch.num_rows == 0:
                continue
            rows = self._rows(layout, batch, source.timestamp_field,
                              source.created_timestamp_column or None)
            with self.conn:
                self.conn.executemany(upsert, rows)
            total += WriteResult(batch.num_rows, batch.num_rows)
        return total

    def _rows(self, layout: WriteLayout, batch: pa.RecordBatch, timestamp: str,
              created: str | None) -> list[tuple[Any, ...]]:
        keys = encode_keys(layout, [batch.column(k) for k in layout.join_keys], "").to_pylist()
        stamps = _epoch_seconds(batch.column(timestamp), timestamp)
        created_at = (_epoch_seconds(batch.column(created), created) if created
                      else [None] * batch.num_rows)
        rows: list[tuple[Any, ...]] = []
        for name, value_type in zip(layout.features, layout.feature_types, strict=True):
            values = encode_values(batch.column(name), value_type).to_pylist()
            texts = [_text(value) for value in values]
            rows.extend(zip(keys, [name] * len(keys), values, texts, stamps, created_at,
                            strict=True))
        return rows


def _text(value: bytes) -> str | None:
    # Feast's own derivation, from the same serialized Value (b"": a null, no text)
    return extract_text_and_num(ValueProto.FromString(value), False)[0] if value else None


def _epoch_seconds(column: pa.Array | pa.ChunkedArray, name: str) -> list[int | None]:
    """Each time as Feast's sqlite3 adapter stores it: `int(naive.timestamp())` of the UTC time
    to the microsecond, read as local time by Python (computed once per distinct time)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    distinct, positions = np.unique(timestamp_micros(array, name), return_inverse=True)
    seconds = [int((_EPOCH + timedelta(microseconds=m)).timestamp()) for m in distinct.tolist()]
    out: list[int | None] = [seconds[p] for p in positions.tolist()]
    if array.null_count:
        for i in np.flatnonzero(~np.asarray(array.is_valid().to_numpy(zero_copy_only=False))):
            out[i] = None
    return out
