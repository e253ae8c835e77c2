"""The one writer of Feast's Redis online layout: Arrow batches in, one pipelined round trip out.

Feast's `RedisOnlineStore.online_write_batch` turns every value into a protobuf object, every
row into a Python dict and reads every stored timestamp in a first round trip before writing.
This writer produces the same bytes column by column and keeps Feast's semantics server-side:

1. keys: Feast's entity key serialization (version 3: the sorted join key names, then each
   value as type, length, bytes) followed by the project, built per column with Arrow compute;
2. fields: `_mmh3("view:feature")` -> the serialized `feast.types.Value`, `_ts:view` -> the
   serialized `google.protobuf.Timestamp` of the event time (microseconds, as Feast stores it);
   DOUBLE, FLOAT, INT64, INT32, BOOL and STRING columns are encoded with numpy/Arrow (tests prove
   the bytes equal Feast's `python_values_to_proto_values(...).SerializeToString()`), every
   other type goes through that Feast function itself;
3. newer wins, as in Feast: within a batch only the newest row per key is kept (event time,
   then created time, then the first row), and a row is written only if its event time is
   after the stored `_ts:view` (a stored time of 0 counts as none); a written row also sets
   the key's TTL when the store's `key_ttl_seconds` says so. Two ways to check:
   - `atomic=True` (the default): a Lua script per key, run by Redis atomically: one pipelined
     round trip per batch, safe against any concurrent writer (the stream processor);
   - `atomic=False`: Feast's own algorithm, pipelined: the stored event times in one round
     trip, then HSET (and EXPIRE) of the newer rows in another. About 4x less Redis time than
     a script per key (Lua's per-call cost dominates), with Feast's race: a writer that lands
     between the two round trips of a batch can be overwritten by an older row. The
     materialization engine uses it by default (it is what Feast's materialize does);
   `skip_dedup: true` in the store's config writes without looking, as Feast does then;
4. every row of a batch becomes one command in one pipelined write; batches go out in
   parallel over a few connections. Redis runs one short command per key, so readers are
   served between any two rows of a batch.

A row is written whole or not at all (one script per key). Redis Cluster and Sentinel are not
handled here: `from_repo_config` refuses them and callers fall back to Feast's own writer.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import unquote, urlparse

import hiredis
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureView
from feast.infra.key_encoding_utils import _serialize_val, serialize_entity_key_prefix
from feast.infra.online_stores.helpers import _mmh3, compute_versioned_name
from feast.repo_config import RepoConfig
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from feastflow.errors import InputError, OnlineStoreError

__all__ = [
    "RedisOnlineWriter",
    "RedisTarget",
    "WriteLayout",
    "WriteResult",
    "encode_keys",
    "encode_timestamps",
    "encode_values",
    "write_layouts",
]

EVENT_TIMESTAMP = "event_timestamp"
BATCH_ROWS = 10_000  # rows per pipelined round trip: ~1-3 MB of commands for 20 features
_CONNECTIONS = 2
_PADDED_LIMIT = 1 << 28  # bytes of the padded row matrix of one batch
_STAMP_CACHE_LIMIT = 100_000  # decoded stored event times (they repeat: daily tables)

# Feast's newer-wins check, per key and atomic. ARGV: ttl, "_ts:view", ts bytes, field, value...
# The stored and the new event time are protobuf Timestamps (1: seconds, 2: nanos, varints);
# a stored time of 0 counts as none, as in Feast (`if latest_seen_nanos and ...`).
NEWER_WINS_LUA = b"""
local function stamp(raw)
  local s, n, i, len = 0, 0, 1, #raw
  while i <= len do
    local tag = string.byte(raw, i)
    i = i + 1
    local v, mul, bytes = 0, 1, {}
    repeat
      local b = string.byte(raw, i)
      i = i + 1
      bytes[#bytes + 1] = b
      v = v + (b % 128) * mul
      mul = mul * 128
    until b < 128
    if #bytes == 10 then
      local c, m = 0, 1
      for k = 1, 9 do
        c = c + (127 - bytes[k] % 128) * m
        m = m * 128
      end
      v = -(c + 1)
    end
    if tag == 8 then s = v elseif tag == 16 then n = v end
  end
  return s, n
end
local cur = redis.call('HGET', KEYS[1], ARGV[2])
if cur then
  local cs, cn = stamp(cur)
  if cs ~= 0 or cn ~= 0 then
    local ns, nn = stamp(ARGV[3])
    if ns < cs or (ns == cs and nn <= cn) then return 0 end
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
local ttl = tonumber(ARGV[1])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""
NEWER_WINS_SHA = hashlib.sha1(NEWER_WINS_LUA).hexdigest().encode()


# --- what is written --------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteLayout:
    """What writing one feature view needs: its keys, features with their types, field names."""

    name: str  # the name in the hash fields (with `_vN` when online versioning is on)
    join_keys: tuple[str, ...]  # sorted: the order Feast serializes them in
    key_types: tuple[ValueType, ...]
    features: tuple[str, ...]
    feature_types: tuple[ValueType, ...]

    @classmethod
    def from_view(cls, view: FeatureView, config: RepoConfig | None = None) -> WriteLayout:
        """The layout Feast's Redis store writes for `view` under `config`'s versioning."""
        versioned = bool(config and getattr(config.registry, "enable_online_feature_view_versioning",
                                            False))
        types = {col.name: col.dtype.to_value_type() for col in view.entity_columns}
        join_keys = tuple(sorted(types))
        return cls(
            name=compute_versioned_name(view, versioned), join_keys=join_keys,
            key_types=tuple(types[k] for k in join_keys),
            features=tuple(f.name for f in view.features),
            feature_types=tuple(f.dtype.to_value_type() for f in view.features),
        )

    @property
    def key_prefix(self) -> bytes:
        """Feast's serialization of the join key names (the start of every key)."""
        return serialize_entity_key_prefix(list(self.join_keys))

    @property
    def feature_fields(self) -> tuple[bytes, ...]:
        """The hash field of each feature: murmur3 of "view:feature"."""
        return tuple(_mmh3(f"{self.name}:{f}") for f in self.features)

    @property
    def timestamp_field(self) -> bytes:
        """The hash field of the view's event time."""
        return f"_ts:{self.name}".encode()


def write_layouts(views: Iterable[FeatureView], config: RepoConfig | None = None
                  ) -> dict[str, WriteLayout]:
    """The write layout of each view, by view name."""
    return {view.name: WriteLayout.from_view(view, config) for view in views}


@dataclass(frozen=True)
class WriteResult:
    """Rows offered and rows written (the others were older than what the store held)."""

    rows: int = 0
    written: int = 0

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(self.rows + other.rows, self.written + other.written)


@dataclass(frozen=True)
class EncodedBatch:
    """One batch ready to send: a command (or two) per kept row, and what newer-wins compares."""

    keys: pa.Array  # Feast's Redis key of each kept row
    commands: pa.Array  # the RESP command(s) writing each kept row
    replies_per_row: int
    seconds: np.ndarray  # each kept row's event time
    nanos: np.ndarray
    rows: int  # rows offered, before keeping the newest per key


# --- encoding: Arrow columns to Feast's bytes --------------------------------------------------
#
# A batch's commands are assembled from pieces, each giving every row some bytes: a constant, a
# padded matrix (row i is matrix[i, :lengths[i]]) or an Arrow binary array. `_concat` lays all
# pieces of a row side by side in one padded matrix and drops the padding in one compress, so a
# batch costs a few numpy passes, whatever the number of features.


@dataclass(frozen=True)
class _Padded:
    matrix: np.ndarray  # (rows, width) uint8
    lengths: np.ndarray | None = None  # bytes used per row; None: the full width


Piece: TypeAlias = bytes | _Padded | pa.Array


def _fixed(prefix: bytes, payload: np.ndarray) -> _Padded:
    """`prefix` followed by each row's little-endian bytes of `payload` (a 1-d numeric array)."""
    raw = np.ascontiguousarray(payload).view(np.uint8).reshape(len(payload), -1)
    matrix = np.empty((len(payload), len(prefix) + raw.shape[1]), dtype=np.uint8)
    matrix[:, :len(prefix)] = np.frombuffer(prefix, np.uint8)
    matrix[:, len(prefix):] = raw
    return _Padded(matrix)


def _varints(values: np.ndarray, tag: bytes = b"") -> _Padded:
    """`tag` then the protobuf varint of each int64 (negative: ten bytes, two's complement)."""
    rest = values.astype(np.int64).view(np.uint64).copy()
    matrix = np.zeros((len(values), len(tag) + 10), dtype=np.uint8)
    if tag:
        matrix[:, :len(tag)] = np.frombuffer(tag, np.uint8)
    lengths = np.full(len(values), len(tag) + 1, dtype=np.int64)
    for i in range(10):
        more = rest >= 0x80
        matrix[:, len(tag) + i] = (rest & 0x7F).astype(np.uint8) | (more.astype(np.uint8) << 7)
        rest >>= np.uint64(7)
        lengths += more
    return _Padded(matrix, lengths)


def _digits(lengths: np.ndarray) -> _Padded:
    """Each number in ASCII decimal."""
    count = np.ones(len(lengths), dtype=np.int64)
    for power in range(1, 19):
        count += lengths >= 10**power
    matrix = np.zeros((len(lengths), int(count.max(initial=1))), dtype=np.uint8)
    for j in range(matrix.shape[1]):
        exponent = np.maximum(count - 1 - j, 0)
        matrix[:, j] = 48 + (lengths // 10**exponent) % 10
    return _Padded(matrix, count)


def _lengths(piece: Piece, rows: int) -> np.ndarray:
    if isinstance(piece, bytes):
        return np.full(rows, len(piece), dtype=np.int64)
    if isinstance(piece, _Padded):
        if piece.lengths is None:
            return np.full(rows, piece.matrix.shape[1], dtype=np.int64)
        return piece.lengths
    return np.diff(_buffers(piece)[0])


def _bulk_pieces(value: Sequence[Piece], rows: int) -> list[Piece]:
    """A value as a RESP bulk string: $<length>\\r\\n<bytes>\\r\\n."""
    total = np.zeros(rows, dtype=np.int64)
    for piece in value:
        total += _lengths(piece, rows)
    if rows and (total == total[0]).all():
        return [b"$%d\r\n" % total[0], *value, b"\r\n"]
    return [b"$", _digits(total), b"\r\n", *value, b"\r\n"]


def _concat(*parts: Piece) -> pa.Array:
    """Row-wise concatenation of pieces, as one large_binary array."""
    rows = next((len(p) if isinstance(p, pa.Array) else p.matrix.shape[0]
                 for p in parts if not isinstance(p, bytes)), 1)
    slots: list[Piece] = []
    for part in parts:
        if isinstance(part, bytes) and slots and isinstance(slots[-1], bytes):
            slots[-1] = slots[-1] + part  # adjacent constants: one slot
        else:
            slots.append(part)
    arrays = {i: _buffers(p) for i, p in enumerate(slots) if isinstance(p, pa.Array)}
    widths = [len(p) if isinstance(p, bytes) else p.matrix.shape[1] if isinstance(p, _Padded)
              else int(np.diff(arrays[i][0]).max(initial=0)) for i, p in enumerate(slots)]
    width = sum(widths)
    if rows * width > _PADDED_LIMIT:  # a few very long values: let Arrow join them instead
        args = [pa.scalar(p, pa.large_binary()) if isinstance(p, bytes) else
                (p if isinstance(p, pa.Array) else _to_arrow(p)).cast(pa.large_binary())
                for p in slots]
        return pc.binary_join_element_wise(*args, pa.scalar(b"", pa.large_binary()))
    matrix = np.empty((rows, width), dtype=np.uint8)
    keep = np.ones((rows, width), dtype=bool)
    padded = False
    column = 0
    for i, (slot, slot_width) in enumerate(zip(slots, widths, strict=True)):
        end = column + slot_width
        if isinstance(slot, bytes):
            matrix[:, column:end] = np.frombuffer(slot, np.uint8)
        elif isinstance(slot, _Padded):
            matrix[:, column:end] = slot.matrix
            if slot.lengths is not None:
                keep[:, column:end] = np.arange(slot_width) < slot.lengths[:, None]
                padded = True
        elif slot_width:
            offsets, data = arrays[i]
            lengths = np.diff(offsets)
            starts = np.repeat(np.arange(rows, dtype=np.int64) * width + column - offsets[:-1],
                               lengths)
            matrix.reshape(-1)[starts + np.arange(offsets[0], offsets[-1])] = data[
                offsets[0]:offsets[-1]]
            keep[:, column:end] = np.arange(slot_width) < lengths[:, None]
            padded = True
        column = end
    if not padded:
        return _large_binary(matrix.reshape(-1), np.full(rows, width, dtype=np.int64))
    return _large_binary(matrix[keep], keep.sum(axis=1))


def _to_arrow(piece: _Padded) -> pa.Array:
    return _concat(piece)


def _buffers(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The offsets (int64, one past each row) and bytes of a binary array (nulls: empty)."""
    if array.type not in (pa.binary(), pa.large_binary()):
        array = array.cast(pa.binary())
    if array.null_count:
        array = array.fill_null(b"")
    offsets_buffer, data_buffer = array.buffers()[1], array.buffers()[2]
    kind = np.int32 if array.type == pa.binary() else np.int64
    offsets = np.frombuffer(offsets_buffer, kind)[array.offset:array.offset + len(array) + 1]
    data = (np.frombuffer(data_buffer, np.uint8) if data_buffer is not None
            else np.zeros(0, np.uint8))
    return offsets.astype(np.int64), data


def _large_binary(data: np.ndarray, lengths: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(pa.large_binary(), len(lengths),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())])


def _nulls_to_empty(pieces: list[Piece], valid: np.ndarray | None) -> list[Piece]:
    # A null value is an empty Value message: zero bytes, as Feast stores it.
    if valid is None or valid.all():
        return pieces
    out: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, _Padded):
            lengths = _lengths(piece, len(valid))
            out.append(_Padded(piece.matrix, np.where(valid, lengths, 0)))
        elif isinstance(piece, pa.Array):
            out.append(pc.if_else(pa.array(valid), piece, pa.scalar(b"", piece.type)))
        else:
            raise TypeError("a constant piece cannot be null")
    return out


def _valid(array: pa.Array) -> np.ndarray | None:
    if array.null_count == 0:
        return None
    return np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def _with_nan_invalid(values: np.ndarray, valid: np.ndarray | None) -> np.ndarray | None:
    # Feast's pd.isnull takes NaN for a missing value.
    nan = np.isnan(values)
    if not nan.any():
        return valid
    return ~nan if valid is None else valid & ~nan


def encode_values(column: pa.Array | pa.ChunkedArray, value_type: ValueType) -> pa.Array:
    """Each value of `column` as the bytes Feast stores for it (a serialized Value; null: b"").

    The types Feast's materialization meets most are encoded here without Python objects; the
    rest, and columns whose Arrow type Feast would convert differently, take Feast's own
    `python_values_to_proto_values`.
    """
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(array) == 0:
        return pa.array([], pa.large_binary())
    return _concat(*_value_pieces(array, value_type))


def _value_pieces(array: pa.Array, value_type: ValueType) -> list[Piece]:
    fast = _encode_fast(array, value_type)
    if fast is not None:
        return fast
    protos = python_values_to_proto_values(array.to_numpy(zero_copy_only=False), value_type)
    return [pa.array([p.SerializeToString() for p in protos], pa.binary())]


_INT_TYPES = (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32())
_EXACT_FLOAT = 2**53


def _encode_fast(array: pa.Array, value_type: ValueType) -> list[Piece] | None:
    kind = array.type
    valid = _valid(array)
    if value_type in (ValueType.DOUBLE, ValueType.FLOAT) and (
            pa.types.is_float32(kind) or pa.types.is_float64(kind) or kind in _INT_TYPES):
        values = np.asarray(array.cast(pa.float64(), safe=False).fill_null(0.0).to_numpy(),
                            dtype=np.float64)
        valid = _with_nan_invalid(values, valid)
        if value_type == ValueType.DOUBLE:
            return _nulls_to_empty([_fixed(b"\x29", values.astype("<f8"))], valid)
        with np.errstate(over="ignore"):
            return _nulls_to_empty([_fixed(b"\x35", values.astype("<f4"))], valid)
    if value_type in (ValueType.INT64, ValueType.INT32) and kind in _INT_TYPES:
        if value_type == ValueType.INT32 and kind in (pa.int64(), pa.uint32()):
            return None  # out-of-range values: Feast raises, let it say so
        ints = np.asarray(array.fill_null(0).to_numpy(), dtype=np.int64)
        # With nulls Feast sees a float column (NaN for nulls) and takes int(x) of each float.
        if valid is not None and np.abs(ints).max(initial=0) > _EXACT_FLOAT:
            return None
        tag = b"\x20" if value_type == ValueType.INT64 else b"\x18"
        return _nulls_to_empty([_varints(ints, tag)], valid)
    if value_type == ValueType.BOOL and pa.types.is_boolean(kind):
        flags = np.asarray(array.fill_null(False).to_numpy(zero_copy_only=False), dtype=np.uint8)
        return _nulls_to_empty([_fixed(b"\x38", flags)], valid)
    if value_type == ValueType.STRING and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        text = array.cast(pa.large_binary()).fill_null(b"")
        lengths = np.asarray(pc.binary_length(text).to_numpy(), dtype=np.int64)
        return _nulls_to_empty([_varints(lengths, b"\x12"), text], valid)
    return None


def encode_timestamps(column: pa.Array | pa.ChunkedArray, name: str = EVENT_TIMESTAMP) -> pa.Array:
    """Each event time as Feast stores it in `_ts:view`: a serialized protobuf Timestamp of the
    time truncated to microseconds (Feast goes through Python datetimes)."""
    return _concat(*_timestamp_pieces(*_event_time(column, name)))


def _event_time(column: pa.Array | pa.ChunkedArray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Seconds and nanoseconds of each event time, floored to the microsecond as Feast does."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        raise InputError(f"{name}: {array.null_count} rows have no event time")
    seconds, micro = np.divmod(timestamp_micros(array, name), 1_000_000)
    return seconds, micro * 1000


def timestamp_micros(column: pa.Array | pa.ChunkedArray, name: str) -> np.ndarray:
    """Microseconds since the epoch of each time, floored as Feast's datetimes are (null: 0)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_timestamp(array.type):
        raise InputError(f"{name}: expected a timestamp column, got {array.type}")
    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[array.type.unit]
    raw = np.asarray(array.cast(pa.int64()).fill_null(0).to_numpy(), dtype=np.int64)
    return raw * (1_000_000 // per_second) if per_second <= 1_000_000 else raw // 1000


def _timestamp_pieces(seconds: np.ndarray, nanos: np.ndarray) -> list[Piece]:
    # proto3 leaves out a zero field: 0x08 seconds only when non-zero, 0x10 nanos likewise
    secs, nano = _varints(seconds, b"\x08"), _varints(nanos, b"\x10")
    return [_Padded(secs.matrix, np.where(seconds != 0, _lengths(secs, len(seconds)), 0)),
            _Padded(nano.matrix, np.where(nanos != 0, _lengths(nano, len(nanos)), 0))]


def encode_keys(layout: WriteLayout, columns: Sequence[pa.Array | pa.ChunkedArray],
                project: str) -> pa.Array:
    """Feast's Redis key of each row: serialize_entity_key (version 3) + project.

    `columns` follow `layout.join_keys`. A null key has no serialization in Feast: refused.
    """
    parts: list[Piece] = [layout.key_prefix]
    for name, value_type, column in zip(layout.join_keys, layout.key_types, columns, strict=True):
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if array.null_count:
            raise InputError(f"{name}: {array.null_count} rows have no value for this join key")
        parts += _key_pieces(array, value_type)
    parts.append(project.encode())
    return _concat(*parts)


def _key_pieces(array: pa.Array, value_type: ValueType) -> list[Piece]:
    kind = array.type
    if value_type == ValueType.INT64 and kind in _INT_TYPES:
        ints = np.asarray(array.to_numpy(), dtype="<i8")
        return [_fixed(np.array([4, 8], "<u4").tobytes(), ints)]
    if value_type == ValueType.INT32 and kind in _INT_TYPES and kind not in (pa.int64(), pa.uint32()):
        ints = np.asarray(array.to_numpy(), dtype="<i4")
        return [_fixed(np.array([3, 4], "<u4").tobytes(), ints)]
    is_text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    is_bytes = pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
    if (value_type == ValueType.STRING and is_text) or (value_type == ValueType.BYTES and is_bytes):
        raw = array.cast(pa.large_binary())
        lengths = np.asarray(pc.binary_length(raw).to_numpy(), dtype="<u4")
        type_id = 2 if value_type == ValueType.STRING else 1
        head = np.stack([np.full(len(lengths), type_id, "<u4"), lengths], axis=1).reshape(-1)
        return [_fixed(b"", head.view("<u8")), raw]
    protos = python_values_to_proto_values(array.to_numpy(zero_copy_only=False), value_type)
    encoded = []
    for proto in protos:
        raw_bytes, type_id = _serialize_val(proto.WhichOneof("val"), proto)
        encoded.append(np.array([type_id, len(raw_bytes)], "<u4").tobytes() + raw_bytes)
    return [pa.array(encoded, pa.binary())]


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


# --- newest row per key within a batch ---------------------------------------------------------


def _newest_per_key(keys: pa.Array, stamps: pa.Array, created: pa.Array | None) -> np.ndarray | None:
    """Positions of the rows to keep when a key repeats (None: no key repeats).

    Per key: the latest event time, then the latest created time, then the first row, which is
    what Feast keeps (its materialization sorts by both times; its writer keeps the first of
    equal event times).
    """
    if pc.count_distinct(keys).as_py() == len(keys):
        return None
    sort_keys = [("key", "ascending"), ("ts", "descending")]
    columns = {"key": keys, "ts": stamps}
    if created is not None:
        columns["created"] = created
        sort_keys.append(("created", "descending"))
    table = pa.table(columns)
    order = pc.sort_indices(table, sort_keys=sort_keys)  # nulls last, as pandas sorts them
    sorted_keys = keys.take(order)
    first = np.ones(len(keys), dtype=bool)
    first[1:] = np.asarray(pc.not_equal(sorted_keys[1:], sorted_keys[:-1]).to_numpy(
        zero_copy_only=False), dtype=bool)
    keep = np.asarray(order.to_numpy(), dtype=np.int64)[first]
    keep.sort()  # back in input order
    return keep


# --- the connection ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisTarget:
    """Where the writer connects: a single Redis server (not Cluster, not Sentinel)."""

    host: str = "localhost"
    port: int = 6379
    db: int = 0
    password: str | None = None
    username: str | None = None
    ssl: bool = False

    @classmethod
    def from_url(cls, url: str) -> RedisTarget:
        """From redis://[user:password@]host:port/db (rediss:// for TLS)."""
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", "rediss"):
            raise InputError(f"REDIS_URL must start with redis:// or rediss://, got {url!r}")
        return cls(host=parsed.hostname or "localhost", port=parsed.port or 6379,
                   db=int((parsed.path or "/0").lstrip("/") or 0),
                   password=unquote(parsed.password) if parsed.password else None,
                   username=unquote(parsed.username) if parsed.username else None,
                   ssl=parsed.scheme == "rediss")

    @classmethod
    def from_connection_string(cls, connection_string: str) -> RedisTarget:
        """From Feast's `host:port,db=N,password=...,ssl=true` (one host)."""
        from feast.infra.online_stores.redis import RedisOnlineStore

        nodes, params = RedisOnlineStore._parse_connection_string(connection_string)
        node = nodes[0] if nodes else {"host": "localhost", "port": 6379}
        return cls(host=str(node["host"]), port=int(str(node.get("port") or 6379)),
                   db=int(params.get("db", 0)),
                   password=None if params.get("password") is None else str(params["password"]),
                   username=None if params.get("username") is None else str(params["username"]),
                   ssl=bool(params.get("ssl", False)))


class _Connection:
    """One blocking socket speaking RESP: a payload of commands out, their replies in."""

    def __init__(self, target: RedisTarget, timeout_s: float) -> None:
        try:
            sock = socket.create_connection((target.host, target.port), timeout=timeout_s)
        except OSError as e:
            raise OnlineStoreError(f"cannot connect to Redis at {target.host}:{target.port}: {e}"
                                   ) from e
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if target.ssl:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
        self.sock = sock
        self.reader = hiredis.Reader()
        setup = []
        if target.password is not None:
            auth = [target.username.encode()] if target.username else []
            setup.append(_command(b"AUTH", *auth, target.password.encode()))
        if target.db:
            setup.append(_command(b"SELECT", str(target.db).encode()))
        setup.append(_command(b"SCRIPT", b"LOAD", NEWER_WINS_LUA))
        replies = self.send(b"".join(setup), len(setup))
        _raise_errors(replies)

    def send(self, payload: bytes | memoryview, expected: int) -> list[Any]:
        """Write the commands, read `expected` replies (errors are returned, not raised)."""
        try:
            self.sock.sendall(payload)
            replies: list[Any] = []
            while len(replies) < expected:
                reply = self.reader.gets()
                if reply is False:
                    chunk = self.sock.recv(1 << 20)
                    if not chunk:
                        raise OnlineStoreError("Redis closed the connection")
                    self.reader.feed(chunk)
                    continue
                replies.append(reply)
        except OSError as e:
            raise OnlineStoreError(f"Redis connection failed: {e}") from e
        return replies

    def close(self) -> None:
        self.sock.close()


def _command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(p) for p in parts)


def _raise_errors(replies: Sequence[Any]) -> None:
    if hiredis.ReplyError not in set(map(type, replies)):  # one C pass over many replies
        return
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise OnlineStoreError(f"Redis error: {reply}")


# --- the writer --------------------------------------------------------------------------------


class RedisOnlineWriter:
    """Writes rows of feature views into Feast's Redis layout (see the module docstring).

    Thread-safe: each thread writes over its own connection. `write` takes Arrow (a table, a
    record batch or an iterable of them) with the view's join keys, its features (by feature
    name) and the event time; other columns are ignored.
    """

    def __init__(self, target: RedisTarget, project: str, *, key_ttl_seconds: int | None = None,
                 skip_dedup: bool = False, atomic: bool = True,
                 connections: int = _CONNECTIONS, batch_rows: int = BATCH_ROWS,
                 timeout_s: float = 60.0) -> None:
        if connections < 1 or batch_rows < 1:
            raise InputError("connections and batch_rows must be at least 1")
        self.target = target
        self.project = project
        self.key_ttl_seconds = key_ttl_seconds or 0
        self.skip_dedup = skip_dedup
        self.atomic = atomic
        self._stamps: dict[bytes, tuple[int, int]] = {}
        self.connections = connections
        self.batch_rows = batch_rows
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._opened: list[_Connection] = []
        self._lane_pools: list[ThreadPoolExecutor] = []
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, redis_url: str, project: str, **options: Any) -> RedisOnlineWriter:
        """A writer for the Redis at `redis_url` (redis://host:port/db)."""
        return cls(RedisTarget.from_url(redis_url), project, **options)

    @classmethod
    def from_repo_config(cls, config: RepoConfig, **options: Any) -> RedisOnlineWriter:
        """A writer with the connection, key TTL and dedup setting of a Feast Redis store."""
        store = config.online_store
        if getattr(store, "type", None) != "redis" and type(store).__name__ != "RedisOnlineStoreConfig":
            raise InputError(f"online store {getattr(store, 'type', store)!r} is not Redis")
        if str(getattr(store.redis_type, "value", store.redis_type)) != "redis":
            raise InputError(f"redis_type {store.redis_type!r}: only a single Redis server is "
                             "written directly; Feast's own writer handles Cluster and Sentinel")
        target = RedisTarget.from_connection_string(store.connection_string)
        if target.ssl:  # the CA and client certificate files live in Feast's connection options
            raise InputError("a TLS Redis is written by Feast's own writer, which carries its "
                             "certificate settings")
        return cls(target, config.project, key_ttl_seconds=store.key_ttl_seconds,
                   skip_dedup=bool(store.skip_dedup), **options)

    def __enter__(self) -> RedisOnlineWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection this writer opened."""
        with self._lock:
            for pool in self._lane_pools:
                pool.shutdown(wait=True)
            self._lane_pools = []
            for connection in self._opened:
                connection.close()
            self._opened.clear()
        self._local = threading.local()

    def _connection(self) -> _Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = _Connection(self.target, self.timeout_s)
            self._local.connection = connection
            with self._lock:
                self._opened.append(connection)
        return connection

    # -- encoding --

    def encode(self, layout: WriteLayout, batch: pa.RecordBatch | pa.Table,
               timestamp_column: str = EVENT_TIMESTAMP, created_column: str | None = None,
               unique_keys: bool = False) -> EncodedBatch:
        """One batch as Redis commands: the newest row per key, its key, HSET and event time.

        `unique_keys`: the caller guarantees one row per key (a materialization's latest rows).
        """
        columns = _columns(batch, [*layout.join_keys, *layout.features, timestamp_column,
                                   *([created_column] if created_column else [])], layout.name)
        keys = encode_keys(layout, [columns[k] for k in layout.join_keys], self.project)
        keep = None if unique_keys else _newest_per_key(
            keys, columns[timestamp_column], columns[created_column] if created_column else None)
        if keep is not None:
            picked = pa.array(keep)
            keys = keys.take(picked)
            columns = {name: column.take(picked) for name, column in columns.items()}
        seconds, nanos = _event_time(columns[timestamp_column], timestamp_column)
        rows = len(keys)
        pairs: list[Piece] = [_bulk(layout.timestamp_field),
                              *_bulk_pieces(_timestamp_pieces(seconds, nanos), rows)]
        for field, name, value_type in zip(layout.feature_fields, layout.features,
                                           layout.feature_types, strict=True):
            try:
                values = _value_pieces(columns[name], value_type)
            except (TypeError, ValueError, AssertionError, OverflowError) as e:
                raise InputError(f"{layout.name}.{name}: cannot be stored as {value_type.name}: "
                                 f"{e}") from e
            pairs += [_bulk(field), *_bulk_pieces(values, rows)]
        framed_keys = _bulk_pieces([keys], rows)
        n_args = 2 * (len(layout.features) + 1)
        if self.atomic and not self.skip_dedup:
            head = (b"*%d\r\n$7\r\nEVALSHA\r\n" % (5 + n_args) + _bulk(NEWER_WINS_SHA) + _bulk(b"1"))
            ttl = _bulk(str(self.key_ttl_seconds).encode())
            return EncodedBatch(keys, _concat(head, *framed_keys, ttl, *pairs), 1, seconds, nanos,
                                batch.num_rows)
        commands = _concat(b"*%d\r\n$4\r\nHSET\r\n" % (2 + n_args), *framed_keys, *pairs)
        if self.key_ttl_seconds:  # Feast sets the key's TTL after each written row
            commands = _concat(commands, b"*3\r\n$6\r\nEXPIRE\r\n", *framed_keys,
                               _bulk(str(self.key_ttl_seconds).encode()))
        return EncodedBatch(keys, commands, 2 if self.key_ttl_seconds else 1, seconds, nanos,
                            batch.num_rows)

    # -- writing --

    def write_batch(self, layout: WriteLayout, batch: pa.RecordBatch | pa.Table,
                    timestamp_column: str = EVENT_TIMESTAMP, created_column: str | None = None,
                    unique_keys: bool = False) -> WriteResult:
        """Write one batch on this thread's connection: one pipelined round trip (atomic or
        skip_dedup), else two (the stored event times, then the newer rows)."""
        if batch.num_rows == 0:
            return WriteResult()
        encoded = self.encode(layout, batch, timestamp_column, created_column, unique_keys)
        connection = self._connection()
        if self.atomic and not self.skip_dedup:
            replies = self._send(connection, _payload(encoded.commands), len(encoded.keys))
            return WriteResult(encoded.rows, sum(1 for r in replies if r == 1))
        commands = encoded.commands
        if not self.skip_dedup:
            newer = self._newer(connection, layout, encoded)
            if not newer.all():
                commands = commands.filter(pa.array(newer))
        self._send(connection, _payload(commands), len(commands) * encoded.replies_per_row)
        return WriteResult(encoded.rows, len(commands))

    def _newer(self, connection: _Connection, layout: WriteLayout, encoded: EncodedBatch
               ) -> np.ndarray:
        """Which rows are newer than the event time the store holds for their key (Feast's check,
        with its pipelined read first)."""
        reads = _concat(b"*3\r\n$4\r\nHGET\r\n", *_bulk_pieces([encoded.keys], len(encoded.keys)),
                        _bulk(layout.timestamp_field))
        stored = self._send(connection, _payload(reads), len(encoded.keys))
        stored_seconds = np.zeros(len(stored), dtype=np.int64)
        stored_nanos = np.zeros(len(stored), dtype=np.int64)
        decoded = self._stamps
        for i, raw in enumerate(stored):
            if raw:
                stamp = decoded.get(raw)
                if stamp is None:
                    parsed = Timestamp.FromString(raw)
                    stamp = decoded[raw] = (parsed.seconds, parsed.nanos)
                    if len(decoded) > _STAMP_CACHE_LIMIT:
                        decoded.clear()
                stored_seconds[i], stored_nanos[i] = stamp
        absent = (stored_seconds == 0) & (stored_nanos == 0)
        later = (encoded.seconds > stored_seconds) | (
            (encoded.seconds == stored_seconds) & (encoded.nanos > stored_nanos))
        return np.asarray(absent | later, dtype=bool)

    @staticmethod
    def _send(connection: _Connection, payload: memoryview, expected: int) -> list[Any]:
        replies = connection.send(payload, expected)
        if hiredis.ReplyError in set(map(type, replies)) and any(
                _is_noscript(r) for r in replies):  # the script cache was flushed: load, resend
            connection.send(_command(b"SCRIPT", b"LOAD", NEWER_WINS_LUA), 1)
            replies = connection.send(payload, expected)
        _raise_errors(replies)
        return replies

    def write(self, layout: WriteLayout,
              data: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch | pa.Table],
              timestamp_column: str = EVENT_TIMESTAMP, created_column: str | None = None,
              unique_keys: bool = False) -> WriteResult:
        """Write every row, `batch_rows` at a time, over `connections` connections in parallel.

        Rows are dealt to the connections by key, so the rows of one key are written in input
        order, as one connection would (with `unique_keys`, one row per key in all the data,
        whole batches go round the connections). At most two batches per connection are in
        flight, so an iterator of record batches streams through in bounded memory.
        """
        batches = _slices(data, self.batch_rows)
        total = WriteResult()
        if self.connections == 1:
            for batch in batches:
                total += self.write_batch(layout, batch, timestamp_column, created_column,
                                          unique_keys)
            return total
        lanes = self._lanes()
        pending: list[Future[WriteResult]] = []
        try:
            for number, batch in enumerate(batches):
                parts = ([(lanes[number % len(lanes)], batch)] if unique_keys
                         else zip(lanes, self._deal(layout, batch), strict=True))
                for lane, part in parts:
                    if part.num_rows == 0:
                        continue
                    if len(pending) >= 2 * len(lanes):
                        total += pending.pop(0).result()
                    pending.append(lane.submit(self.write_batch, layout, part, timestamp_column,
                                               created_column, unique_keys))
            while pending:
                total += pending.pop(0).result()
        finally:
            for future in pending:
                future.cancel()
        return total

    def _deal(self, layout: WriteLayout, batch: pa.RecordBatch | pa.Table
              ) -> list[pa.RecordBatch | pa.Table]:
        """The batch's rows split by connection: a key always goes to the same one."""
        columns = _columns(batch, layout.join_keys, layout.name)
        offsets, data = _buffers(encode_keys(layout, [columns[k] for k in layout.join_keys],
                                             self.project))
        sums = np.add.reduceat(data.astype(np.uint64) * 0x9E3779B1 % 0xFFFFFFFB,
                               offsets[:-1]) if len(data) else np.zeros(len(offsets) - 1)
        lane = np.asarray(sums, dtype=np.uint64) % np.uint64(self.connections)
        return [batch.filter(pa.array(lane == i)) for i in range(self.connections)]

    def _lanes(self) -> list[ThreadPoolExecutor]:
        with self._lock:
            if not self._lane_pools:
                self._lane_pools = [ThreadPoolExecutor(1, thread_name_prefix=f"online-writer-{i}")
                                    for i in range(self.connections)]
            return self._lane_pools

    def write_frame(self, layout: WriteLayout, frame: pd.DataFrame,
                    timestamp_column: str = EVENT_TIMESTAMP,
                    created_column: str | None = None) -> WriteResult:
        """`write` for a pandas frame."""
        return self.write(layout, pa.Table.from_pandas(frame, preserve_index=False),
                          timestamp_column, created_column)


def _columns(batch: pa.RecordBatch | pa.Table, names: Sequence[str], view: str
             ) -> dict[str, pa.Array]:
    present = set(batch.schema.names)
    missing = [n for n in dict.fromkeys(names) if n not in present]
    if missing:
        raise InputError(f"{view}: the rows have no column {missing[0]!r} "
                         f"(they have {sorted(present)})")
    out: dict[str, pa.Array] = {}
    for name in dict.fromkeys(names):
        column = batch.column(name)
        out[name] = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return out


def _slices(data: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch | pa.Table],
            rows: int) -> Iterator[pa.RecordBatch | pa.Table]:
    items: Iterable[pa.RecordBatch | pa.Table] = (
        [data] if isinstance(data, pa.Table | pa.RecordBatch) else data)
    for item in items:
        for start in range(0, item.num_rows, rows):
            yield item.slice(start, rows)


def _payload(rows: pa.Array) -> memoryview:
    """The bytes of all rows back to back, straight from the Arrow buffer (no copy)."""
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32 if rows.type == pa.binary()
                            else np.int64)[rows.offset:rows.offset + len(rows) + 1]
    return memoryview(rows.buffers()[2])[int(offsets[0]):int(offsets[-1])]


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")
