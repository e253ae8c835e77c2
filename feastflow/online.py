"""Reading Feast's online store on the serving hot path.

Feast stays the writer and the source of truth (materialize, push). Reads go through one of two
readers with the same interface, each returning, per entity key, the view's event time and its
feature values in declaration order:

- `RedisReader`: reads Feast's documented Redis layout (feast-dev/feast
  docs/specs/online_store_format.md) directly: one hash per entity key, named by Feast's entity
  key serialization plus the project; fields are murmur3 hashes of "view:feature" and
  "_ts:view". Keys are built with Feast's own serialization helpers and values decoded with
  Feast's own type map; tests prove the values equal `get_online_features`. It is an asyncio
  protocol over one pipelined connection: a request's HMGETs go out in one write, many requests
  share the socket, and the event loop never blocks. It speaks what Feast's Redis store speaks
  (`feastflow.redis_config`): TLS, ACL users, Sentinel; `RedisClusterReader` routes each key
  to its slot's node, one pipeline per node.
- `FeastReader`: any online store (the embedded SQLite profile) through Feast's provider
  interface (`online_read`, what `get_online_features` calls per view), in a worker thread.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import functools
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import hiredis
from feast import FeatureStore, FeatureView
from feast.infra.key_encoding_utils import _serialize_val, serialize_entity_key_prefix
from feast.infra.online_stores.helpers import _mmh3
from feast.infra.provider import get_provider
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from feastflow.errors import OnlineStoreError
from feastflow.redis_config import RedisConfig, parse_redis
from feastflow.settings import Settings

# One entity key's row: (event time in Unix seconds, values in the view's feature order), or
# (None, None) when the store holds nothing for the key.
Row = tuple[float | None, tuple[Any, ...] | None]
MISSING: Row = (None, None)
_DECODE_CACHE_LIMIT = 200_000


@dataclass(frozen=True)
class ViewLayout:
    """What reading one feature view needs: its keys, features, TTL and Redis hash fields."""

    name: str
    join_keys: tuple[str, ...]  # sorted: the order Feast serializes them in
    key_types: tuple[ValueType, ...]
    features: tuple[str, ...]
    ttl_seconds: float | None  # None: values never expire
    realtime: bool  # fed by a push source: must never be served from a cache
    key_prefix: bytes
    hmget_fields: bytes  # the RESP-encoded field names of one HMGET (features, then _ts)


def view_layouts(store: FeatureStore) -> dict[str, ViewLayout]:
    """The layout of every feature view in the store's registry."""
    return {view.name: _layout(view) for view in store.list_feature_views()}


def _layout(view: FeatureView) -> ViewLayout:
    types = {col.name: col.dtype.to_value_type() for col in view.entity_columns}
    join_keys = tuple(sorted(types))
    features = tuple(f.name for f in view.features)
    fields = [_mmh3(f"{view.name}:{name}") for name in features] + [f"_ts:{view.name}".encode()]
    ttl = view.ttl.total_seconds() if view.ttl and view.ttl.total_seconds() > 0 else None
    source = view.stream_source or view.batch_source
    return ViewLayout(
        name=view.name, join_keys=join_keys, key_types=tuple(types[k] for k in join_keys),
        features=features, ttl_seconds=ttl,
        realtime=type(source).__name__ == "PushSource" or view.stream_source is not None,
        key_prefix=serialize_entity_key_prefix(list(join_keys)),
        hmget_fields=b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in fields),
    )


class KeyEncoder:
    """Feast's Redis key of an entity: `serialize_entity_key(...) + project`, built from parts.

    The serialization is the prefix of the sorted join key names followed by each value as
    (type, length, bytes); the per-value parts come from Feast's `_serialize_val` and are
    cached, so a key costs a few dictionary lookups instead of a protobuf round trip.
    """

    def __init__(self, project: str) -> None:
        self.project = project.encode()
        self._parts: dict[tuple[ValueType, Any], bytes] = {}

    def encode(self, layout: ViewLayout, values: Sequence[Any]) -> bytes:
        """The Redis key of one entity; `values` follow `layout.join_keys`."""
        parts = [layout.key_prefix]
        for value_type, value in zip(layout.key_types, values, strict=True):
            part = self._parts.get((value_type, value))
            if part is None:
                part = self._part(value_type, value)
            parts.append(part)
        parts.append(self.project)
        return b"".join(parts)

    def _part(self, value_type: ValueType, value: Any) -> bytes:
        proto = _to_proto(value_type, value)
        raw, type_id = _serialize_val(proto.WhichOneof("val"), proto)
        part = struct.pack("<I", type_id) + struct.pack("<I", len(raw)) + raw
        if len(self._parts) > _DECODE_CACHE_LIMIT:
            self._parts.clear()
        self._parts[(value_type, value)] = part
        return part


def _to_proto(value_type: ValueType, value: Any) -> ValueProto:
    if value_type == ValueType.STRING:
        return ValueProto(string_val=str(value))
    if value_type == ValueType.INT64:
        return ValueProto(int64_val=int(value))
    if value_type == ValueType.INT32:
        return ValueProto(int32_val=int(value))
    if value_type == ValueType.BYTES:
        return ValueProto(bytes_val=bytes(value))
    raise ValueError(f"entity keys of type {value_type.name} are not supported by the Redis reader")


class ValueDecoder:
    """Feast's stored bytes to Python values, as `get_online_features(...).to_dict()` gives them.

    Stored values repeat a lot (counts, shares, app lists, daily timestamps), so each distinct
    byte string is decoded once. Decoded lists are shared: callers must not mutate them.
    """

    def __init__(self) -> None:
        self._values: dict[bytes, Any] = {}
        self._stamps: dict[bytes, float] = {}

    def value(self, raw: bytes | None) -> Any:
        """One feature value; None when missing."""
        if not raw:
            return None
        try:
            return self._values[raw]
        except KeyError:
            decoded = feast_value_type_to_python_type(ValueProto.FromString(raw))
            if len(self._values) > _DECODE_CACHE_LIMIT:
                self._values.clear()
            self._values[raw] = decoded
            return decoded

    def timestamp(self, raw: bytes | None) -> float | None:
        """An event time in Unix seconds; None when missing."""
        if not raw:
            return None
        try:
            return self._stamps[raw]
        except KeyError:
            stamp = Timestamp.FromString(raw)
            seconds = stamp.seconds + stamp.nanos / 1e9
            if len(self._stamps) > _DECODE_CACHE_LIMIT:
                self._stamps.clear()
            self._stamps[raw] = seconds
            return seconds

    def row(self, layout: ViewLayout, reply: Sequence[bytes | None]) -> Row:
        """One HMGET reply (features then _ts) as a Row."""
        stamp = self.timestamp(reply[-1])
        if stamp is None and not any(reply):
            return MISSING
        value = self.value
        return stamp, tuple(value(raw) for raw in reply[:-1])


class OnlineReader(Protocol):
    """Reads rows of several views in one round trip."""

    async def read(self, reads: Sequence[tuple[ViewLayout, Sequence[Sequence[Any]]]]
                   ) -> list[list[Row]]:
        """For each (view, entity key values), one Row per key, in order."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class _RedisProtocol(asyncio.Protocol):
    """Pipelined RESP over one connection: replies arrive in command order (FIFO waiters)."""

    def __init__(self, on_lost: Any) -> None:
        self.reader = hiredis.Reader()
        self.waiters: collections.deque[tuple[asyncio.Future[list[Any]], int, list[Any]]] = (
            collections.deque())
        self.transport: asyncio.Transport | None = None
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiters = self.waiters
        while waiters:
            reply = self.reader.gets()
            if reply is False:
                return
            future, expected, replies = waiters[0]
            replies.append(reply)
            if len(replies) == expected:
                waiters.popleft()
                if not future.done():  # a caller that timed out has gone: drop its replies
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        error = OnlineStoreError(f"Redis connection lost: {exc or 'closed'}")
        while self.waiters:
            future, _, _ = self.waiters.popleft()
            if not future.done():
                future.set_exception(error)
        self._on_lost(self)

    def send(self, payload: bytes, expected: int) -> asyncio.Future[list[Any]]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiters.append((future, expected, []))
        if self.transport is None:
            raise OnlineStoreError("Redis connection not open")
        self.transport.write(payload)
        return future


Address = tuple[str, int]


class _NodeConnection:
    """One pipelined connection to one Redis server, opened on first use: TCP or TLS, then
    AUTH (ACL username and password) and SELECT, as redis-py does for Feast."""

    def __init__(self, address: Address, config: RedisConfig, ssl_context: ssl.SSLContext | None,
                 connect_timeout_s: float, select_db: bool = True) -> None:
        self.address = address
        self.config = config
        self.ssl_context = ssl_context
        self.connect_timeout_s = connect_timeout_s
        self.select_db = select_db
        self.protocol: _RedisProtocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def get(self) -> _RedisProtocol:
        """The open connection, connecting first if there is none."""
        if self.protocol is not None:
            return self.protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self.protocol is None:
                self.protocol = await self._connect()
        return self.protocol

    async def _connect(self) -> _RedisProtocol:
        loop = asyncio.get_running_loop()
        host, port = self.address
        tls = self.ssl_context
        try:
            _, protocol = await asyncio.wait_for(loop.create_connection(
                lambda: _RedisProtocol(self._lost), host, port, ssl=tls,
                server_hostname=host if tls else None), self.connect_timeout_s)
        except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
            raise OnlineStoreError(f"cannot connect to Redis at {host}:{port}"
                                   f"{' (TLS)' if tls else ''}: {e}") from e
        setup = []
        config = self.config
        if config.password:
            credentials = ((config.username.encode(),) if config.username else ())
            setup.append(_command(b"AUTH", *credentials, config.password.encode()))
        if config.db and self.select_db:
            setup.append(_command(b"SELECT", str(config.db).encode()))
        if setup:
            try:
                replies = await asyncio.wait_for(protocol.send(b"".join(setup), len(setup)),
                                                 self.connect_timeout_s)
                _raise_errors(replies)
            except (OnlineStoreError, TimeoutError) as e:
                if protocol.transport is not None:
                    protocol.transport.abort()
                raise OnlineStoreError(f"Redis at {host}:{port} refused the connection's setup "
                                       f"(AUTH as {config.username or 'default'}, SELECT "
                                       f"{config.db}): {e}") from e
        return protocol

    def _lost(self, protocol: _RedisProtocol) -> None:
        if self.protocol is protocol:
            self.protocol = None

    def abort(self) -> None:
        """Drop the connection at once (a hung server)."""
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.abort()
        self.protocol = None

    def close(self) -> None:
        """Close the connection."""
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()
        self.protocol = None


class RedisReader:
    """Feast's Redis online layout read directly, over one pipelined asyncio connection.

    `redis` is a `RedisConfig` or anything `parse_redis` reads (a redis:// or rediss:// URL,
    Feast's connection string). `redis_type: redis_sentinel` asks the sentinels for the
    master's address at each (re)connection; `redis_cluster` is `RedisClusterReader`.
    """

    def __init__(self, redis: str | RedisConfig, project: str, connect_timeout_s: float = 1.0
                 ) -> None:
        self.config = redis if isinstance(redis, RedisConfig) else parse_redis(redis)
        self.connect_timeout_s = connect_timeout_s
        self.ssl_context = self.config.ssl_context()
        self.keys = KeyEncoder(project)
        self.decoder = ValueDecoder()
        self._node: _NodeConnection | None = None

    async def _connection(self) -> _RedisProtocol:
        if self._node is None:
            self._node = _NodeConnection(await self._server_address(), self.config,
                                         self.ssl_context, self.connect_timeout_s)
        try:
            return await self._node.get()
        except OnlineStoreError:
            if self.config.redis_type == "redis_sentinel":
                self._node = None  # the master may have moved: ask the sentinels again
            raise

    async def _server_address(self) -> Address:
        if self.config.redis_type != "redis_sentinel":
            return self.config.nodes[0]
        return await sentinel_master_address(self.config, self.connect_timeout_s)

    def reset(self) -> None:
        """Drop the connection (e.g. when a circuit breaker opens on a hung server)."""
        if self._node is not None:
            self._node.abort()
        if self.config.redis_type == "redis_sentinel":
            self._node = None

    async def read(self, reads: Sequence[tuple[ViewLayout, Sequence[Sequence[Any]]]]
                   ) -> list[list[Row]]:
        """One pipelined round trip: one HMGET per distinct entity key.

        Feast keeps every view of the same entity key in one hash, so views sharing join keys
        (and the same key asked twice) are read by a single HMGET of all their fields.
        """
        groups: dict[tuple[tuple[str, ...], tuple[ValueType, ...]], list[int]] = {}
        for index, (layout, _) in enumerate(reads):
            groups.setdefault((layout.join_keys, layout.key_types), []).append(index)
        encode = self.keys.encode
        chunks: list[bytes] = []
        keys: list[bytes] = []
        plans: list[tuple[list[int], dict[tuple[Any, ...], int], int]] = []
        count = 0
        for members in groups.values():
            layouts = [reads[i][0] for i in members]
            fields = b"".join(layout.hmget_fields for layout in layouts)
            header = b"*%d\r\n$5\r\nHMGET\r\n" % (sum(len(lo.features) + 1 for lo in layouts) + 2)
            positions: dict[tuple[Any, ...], int] = {}
            for i in members:
                for values in reads[i][1]:
                    key_values = tuple(values)
                    if key_values not in positions:
                        positions[key_values] = count + len(positions)
                        key = encode(layouts[0], key_values)
                        keys.append(key)
                        chunks.append(b"%s$%d\r\n%s\r\n%s" % (header, len(key), key, fields))
            plans.append((members, positions, count))
            count += len(positions)
        if not count:
            return [[] for _ in reads]
        replies = await self._execute(chunks, keys)
        _raise_errors(replies)
        out: list[list[Row]] = [[] for _ in reads]
        row = self.decoder.row
        for members, positions, _ in plans:
            offset = 0
            for i in members:
                layout, entity_keys = reads[i]
                width = len(layout.features) + 1
                out[i] = [row(layout, replies[positions[tuple(v)]][offset:offset + width])
                          for v in entity_keys]
                offset += width
        return out

    async def _execute(self, commands: list[bytes], keys: list[bytes]) -> list[Any]:
        """The replies of `commands` (one per key of `keys`), in order: one pipelined write."""
        protocol = await self._connection()
        return await protocol.send(b"".join(commands), len(commands))

    async def ping(self) -> bool:
        """PING answered with PONG."""
        try:
            protocol = await self._connection()
            reply = await asyncio.wait_for(protocol.send(_command(b"PING"), 1), 1.0)
        except (OnlineStoreError, TimeoutError):
            return False
        return reply == [b"PONG"]

    async def close(self) -> None:
        """Close the connection."""
        if self._node is not None:
            self._node.close()
        self._node = None


async def sentinel_master_address(config: RedisConfig, timeout_s: float) -> Address:
    """The master's address as the first answering sentinel gives it (as redis-py's Sentinel,
    sentinels are asked without the master's credentials or TLS)."""
    loop = asyncio.get_running_loop()
    errors = []
    query = _command(b"SENTINEL", b"get-master-addr-by-name", config.sentinel_master.encode())
    for host, port in config.nodes:
        protocol = _RedisProtocol(lambda _: None)
        try:
            await asyncio.wait_for(loop.create_connection(
                functools.partial(lambda p: p, protocol), host, port), timeout_s)
            (reply,) = await asyncio.wait_for(protocol.send(query, 1), timeout_s)
        except (OSError, TimeoutError, OnlineStoreError) as e:
            errors.append(f"{host}:{port}: {e}")
            continue
        finally:
            if protocol.transport is not None:
                protocol.transport.close()
        if isinstance(reply, list) and len(reply) == 2:
            return reply[0].decode(), int(reply[1])
        errors.append(f"{host}:{port}: knows no master named {config.sentinel_master!r}")
    raise OnlineStoreError(f"no sentinel gave the address of {config.sentinel_master!r}: "
                           + "; ".join(errors))


def key_slot(key: bytes) -> int:
    """The Redis Cluster hash slot of a key: CRC16 (XMODEM) of its hash tag, or of the key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return binascii.crc_hqx(key, 0) & 16383


_MAX_REDIRECTIONS = 5
_ASKING = b"*1\r\n$6\r\nASKING\r\n"


class RedisClusterReader(RedisReader):
    """Feast's Redis layout in a Redis Cluster: each key goes to the node that owns its slot.

    The slot map comes from CLUSTER SLOTS on first use. A read sends one pipeline per node
    (concurrently) and reassembles the replies in command order. A MOVED reply (a slot moved:
    resharding or failover) refreshes the map and resends; an ASK reply (a slot being migrated)
    resends that command to the node named, preceded by ASKING. A lost node refreshes the map
    on the next read, since its slots may have failed over to a replica.
    """

    def __init__(self, redis: str | RedisConfig, project: str, connect_timeout_s: float = 1.0
                 ) -> None:
        super().__init__(redis, project, connect_timeout_s)
        self._nodes: dict[Address, _NodeConnection] = {}
        self._slots: list[Address] | None = None

    def _node_at(self, address: Address) -> _NodeConnection:
        node = self._nodes.get(address)
        if node is None:
            node = self._nodes[address] = _NodeConnection(
                address, self.config, self.ssl_context, self.connect_timeout_s, select_db=False)
        return node

    async def _connection(self) -> _RedisProtocol:
        # PING and the like: any node answers for the cluster.
        slots = await self._slot_map()
        return await self._node_at(slots[0]).get()

    async def _slot_map(self) -> list[Address]:
        if self._slots is None:
            self._slots = await self._fetch_slot_map()
        return self._slots

    async def _fetch_slot_map(self) -> list[Address]:
        errors = []
        seeds = list(dict.fromkeys([*self._nodes, *self.config.nodes]))
        for address in seeds:
            try:
                protocol = await self._node_at(address).get()
                (reply,) = await asyncio.wait_for(
                    protocol.send(_command(b"CLUSTER", b"SLOTS"), 1), self.connect_timeout_s)
                _raise_errors([reply])
            except (OnlineStoreError, TimeoutError) as e:
                errors.append(f"{address[0]}:{address[1]}: {e}")
                continue
            table: list[Address | None] = [None] * 16384
            for start, end, master, *_ in reply:
                host = master[0].decode() or address[0]  # "" means the node we asked
                table[start:end + 1] = [(host, int(master[1]))] * (end - start + 1)
            if any(a is None for a in table):
                errors.append(f"{address[0]}:{address[1]}: not every slot is served")
                continue
            return table  # type: ignore[return-value]
        raise OnlineStoreError("cannot read the Redis Cluster's slot map: " + "; ".join(errors))

    async def _execute(self, commands: list[bytes], keys: list[bytes]) -> list[Any]:
        """Each command to its slot's node, one pipeline per node; redirections followed."""
        replies: list[Any] = [None] * len(commands)
        pending: list[tuple[int, Address | None]] = [(i, None) for i in range(len(commands))]
        for _ in range(_MAX_REDIRECTIONS + 1):
            slots = await self._slot_map()
            batches: dict[tuple[Address, bool], list[int]] = {}
            for i, asked in pending:
                target = asked or slots[key_slot(keys[i])]
                batches.setdefault((target, asked is not None), []).append(i)
            try:
                results = await asyncio.gather(*(
                    self._send(address, [commands[i] for i in members], asking)
                    for (address, asking), members in batches.items()))
            except OnlineStoreError:
                self._slots = None  # a node is gone: its slots may have failed over
                raise
            pending = []
            for ((_, _), members), node_replies in zip(batches.items(), results, strict=True):
                for i, reply in zip(members, node_replies, strict=True):
                    redirect = _redirection(reply)
                    if redirect is None:
                        replies[i] = reply
                    elif redirect[0] == "MOVED":
                        self._slots = None
                        pending.append((i, None))
                    else:
                        pending.append((i, redirect[1]))
            if not pending:
                return replies
        raise OnlineStoreError(f"Redis Cluster still redirects after {_MAX_REDIRECTIONS} tries "
                               "(a resharding in progress?)")

    async def _send(self, address: Address, commands: list[bytes], asking: bool) -> list[Any]:
        protocol = await self._node_at(address).get()
        if not asking:
            return await protocol.send(b"".join(commands), len(commands))
        replies = await protocol.send(b"".join(_ASKING + c for c in commands), 2 * len(commands))
        return replies[1::2]

    def reset(self) -> None:
        """Drop every node's connection and the slot map."""
        for node in self._nodes.values():
            node.abort()
        self._slots = None

    async def close(self) -> None:
        """Close every node's connection."""
        for node in self._nodes.values():
            node.close()
        self._nodes.clear()
        self._slots = None


def _redirection(reply: Any) -> tuple[str, Address] | None:
    """("MOVED" | "ASK", address) for a cluster redirection reply, else None."""
    if not isinstance(reply, hiredis.ReplyError):
        return None
    text = str(reply)
    if not text.startswith(("MOVED ", "ASK ")):
        return None
    kind, _, address = text.split(" ", 2)
    host, _, port = address.rpartition(":")
    return kind, (host, int(port))


def _command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _raise_errors(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise OnlineStoreError(f"Redis error: {reply}")


class FeastReader:
    """Any online store through Feast's provider interface (`online_read`), in a worker thread.

    The same call Feast's `get_online_features` makes per view, without its response building;
    values are converted with Feast's type map and event times keep their microseconds.
    """

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        self.provider = get_provider(store.config)
        self.views = {view.name: view for view in store.list_feature_views()}

    async def read(self, reads: Sequence[tuple[ViewLayout, Sequence[Sequence[Any]]]]
                   ) -> list[list[Row]]:
        """Each view's rows through Feast's provider."""
        return await asyncio.to_thread(self.read_sync, reads)

    def read_sync(self, reads: Sequence[tuple[ViewLayout, Sequence[Sequence[Any]]]]
                  ) -> list[list[Row]]:
        """The blocking read behind `read`."""
        out: list[list[Row]] = []
        for layout, keys in reads:
            if not keys:
                out.append([])
                continue
            entity_keys = [EntityKeyProto(
                join_keys=list(layout.join_keys),
                entity_values=[_to_proto(t, v) for t, v in zip(layout.key_types, values, strict=True)])
                for values in keys]
            try:
                found = self.provider.online_read(
                    config=self.store.config, table=self.views[layout.name],
                    entity_keys=entity_keys, requested_features=list(layout.features))
            except Exception as e:  # any failure of the store is the store being down
                raise OnlineStoreError(f"online store read failed: {e}") from e
            rows: list[Row] = []
            for stamp, values in found:
                decoded = tuple(None if values is None or f not in values
                                else feast_value_type_to_python_type(values[f])
                                for f in layout.features)
                seconds = stamp.timestamp() if stamp is not None else None
                if all(v is None for v in decoded) and not seconds:
                    rows.append(MISSING)  # Redis answers epoch 0 and empty values for no key
                else:
                    rows.append((seconds, decoded))
            out.append(rows)
        return out

    async def ping(self) -> bool:
        """The embedded store is a local file: always there."""
        return True

    async def close(self) -> None:
        """Nothing to release."""


def open_reader(settings: Settings, store: FeatureStore) -> OnlineReader:
    """The profile's reader: Feast's Redis layout read directly (one server, Sentinel or
    Cluster), else Feast's provider."""
    if settings.online_redis:
        config = settings.redis()
        if config.redis_type == "redis_cluster":
            return RedisClusterReader(config, store.project)
        return RedisReader(config, store.project)
    return FeastReader(store)
