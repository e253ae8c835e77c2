"""Where the stream processor's rows go online: one call per micro-batch, tables in order.

- Redis (a single server): `RedisRowWriter` encodes each table's rows with the shared writer
  (`feastflow/online_writer.py`: Feast's keys, Feast's value and timestamp serialization, newer
  wins checked by Redis per key, the store's key TTL) and sends the commands of every table of
  the batch in ONE pipelined round trip, in the order given (the entity table last: once it
  shows an event, every row that event produced is online). Feast's `push` read the feature
  services from the SQL registry at every call and turned every value into a protobuf object.
- any other online store (SQLite in the embedded profile, Redis Cluster): `FeastRowWriter`
  writes through Feast's `write_to_online_store` for each view the push source feeds, as
  `FeatureStore.push` does, with that routing and the feature services to precompute read
  from the registry once per `cache_ttl_seconds` instead of at every push.

A batch re-sent after a failure writes nothing twice: a row whose event time is not newer than
the stored one is skipped (Feast's rule), and the processor's rows are stamped strictly later
per key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import redis
from feast import FeatureStore
from feast.data_source import PushSource
from feast.errors import PushSourceNotFoundException

from feastflow.errors import InputError, OnlineStoreError
from feastflow.online_writer import NEWER_WINS_LUA, RedisOnlineWriter, WriteLayout
from feastflow.realtime import RealtimeFeatures, Row
from feastflow.redis_config import RedisConfig, parse_redis, sync_client

Tables = dict[str, list[Row]]  # real-time table -> its rows, written in the dict's order


class RowWriter(Protocol):
    """Writes a micro-batch's rows of every real-time table online."""

    def write(self, tables: Tables) -> int:
        """Write the rows of each table to the views its push source feeds, tables in order;
        return the rows offered."""
        ...


class PushRoutes:
    """Push source -> the views it feeds (as `FeatureStore.push` finds them) and the feature
    services to precompute after a write, read from the registry once per its cache TTL."""

    def __init__(self, store: FeatureStore, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        ttl = getattr(store.config.registry, "cache_ttl_seconds", 60) or 0
        self.ttl_seconds = float(ttl) if ttl > 0 else float("inf")  # Feast: 0 never expires
        self.clock = clock
        self._routes: dict[str, tuple[list[Any], list[str]]] = {}
        self._expires = 0.0
        self.reads = 0  # registry reads so far

    def route(self, source: str) -> tuple[list[Any], list[str]]:
        """The views `source` feeds and the services to precompute after writing them."""
        if self.clock() >= self._expires:
            self._routes = self._read()
            self._expires = self.clock() + self.ttl_seconds
        if source not in self._routes:
            raise PushSourceNotFoundException(source)
        return self._routes[source]

    def _read(self) -> dict[str, tuple[list[Any], list[str]]]:
        self.reads += 1
        store = self.store
        views: dict[str, list[Any]] = {}
        for view in [*store.list_feature_views(allow_cache=True),
                     *store.list_stream_feature_views(allow_cache=True)]:
            if isinstance(view.stream_source, PushSource):
                views.setdefault(view.stream_source.name, []).append(view)
        services = store.list_feature_services()
        return {source: (fed, [s.name for s in services if s.precompute_online and any(
                    p.name in {v.name for v in fed} for p in s.feature_view_projections)])
                for source, fed in views.items()}


class RedisRowWriter:
    """Every table of a batch in one pipelined round trip, encoded by the shared writer."""

    def __init__(self, realtime: RealtimeFeatures, writer: RedisOnlineWriter, routes: PushRoutes,
                 client: redis.Redis) -> None:
        if not writer.atomic and not writer.skip_dedup:
            raise InputError("the stream processor needs the atomic newer-wins writer: another "
                             "writer (a materialization) may land between two round trips")
        self.realtime = realtime
        self.writer = writer
        self.routes = routes
        self.client = client
        self.written = 0  # rows stored (the others were not newer than the stored ones)
        self._layouts: dict[str, WriteLayout] = {}
        self._layouts_of_read = -1  # the routes' read the layouts were computed from

    @classmethod
    def for_store(cls, realtime: RealtimeFeatures, store: FeatureStore,
                  connection: str | RedisConfig) -> RedisRowWriter:
        """From the store's Redis config (InputError for Cluster, Sentinel, TLS or another
        store); `connection` is REDIS_URL or its parsed form (ACL user included)."""
        writer = RedisOnlineWriter.from_repo_config(store.config, atomic=True)
        config = parse_redis(connection) if isinstance(connection, str) else connection
        return cls(realtime, writer, PushRoutes(store),
                   sync_client(config, socket_timeout=30, socket_connect_timeout=5))

    def write(self, tables: Tables) -> int:
        """One round trip for all tables; Feast's newer-wins decides row by row in Redis."""
        payloads: list[bytes] = []
        expected = offered = 0
        for table_name, rows in tables.items():
            if not rows:
                continue
            views, _ = self.routes.route(self.realtime.push_sources[table_name])
            table = self.realtime.rows_table(rows, table_name)
            for view in views:
                encoded = self.writer.encode(self._layout(view), table)
                payloads += encoded.commands.to_pylist()
                expected += len(encoded.commands) * encoded.replies_per_row
            offered += len(rows)
        if payloads:
            replies = self._send(b"".join(payloads), expected)
            if self.writer.atomic and not self.writer.skip_dedup:
                self.written += sum(1 for r in replies if r == 1)
        return offered

    def _layout(self, view: Any) -> WriteLayout:
        if self._layouts_of_read != self.routes.reads:  # the registry was read again
            self._layouts, self._layouts_of_read = {}, self.routes.reads
        layout = self._layouts.get(view.name)
        if layout is None:
            layout = self._layouts[view.name] = WriteLayout.from_view(view,
                                                                      self.routes.store.config)
        return layout

    def _send(self, payload: bytes, expected: int) -> list[Any]:
        replies = self._round_trip(payload, expected)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
            self.client.script_load(NEWER_WINS_LUA)  # Redis restarted or SCRIPT FLUSH: resend
            replies = self._round_trip(payload, expected)  # (rows written once stay: not newer)
        errors = [r for r in replies if isinstance(r, Exception)]
        if errors:
            raise OnlineStoreError(f"Redis refused {len(errors)} of {expected} online writes: "
                                   f"{errors[0]}")
        return replies

    def _round_trip(self, payload: bytes, expected: int) -> list[Any]:
        pool = self.client.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_packed_command([payload])
            replies: list[Any] = []
            for _ in range(expected):  # read every reply, errors included, so the
                try:  # connection stays in step
                    replies.append(connection.read_response(disconnect_on_error=False))
                except redis.exceptions.ResponseError as e:
                    replies.append(e)
            return replies
        except BaseException:
            connection.disconnect()  # a half-read connection must not be reused
            raise
        finally:
            pool.release(connection)

    def close(self) -> None:
        """Close the connections."""
        self.client.close()
        self.writer.close()


class FeastRowWriter:
    """Feast's `write_to_online_store` per view, the push routing cached per registry TTL."""

    def __init__(self, realtime: RealtimeFeatures, store: FeatureStore) -> None:
        self.realtime = realtime
        self.store = store
        self.routes = PushRoutes(store)

    def write(self, tables: Tables) -> int:
        """Write each table's rows to the views its push source feeds; then precompute the
        feature services that ask for it (as `FeatureStore.push` does)."""
        offered = 0
        for table_name, rows in tables.items():
            if not rows:
                continue
            views, services = self.routes.route(self.realtime.push_sources[table_name])
            frame = self.realtime.rows_frame(rows, table_name)
            for view in views:
                self.store.write_to_online_store(view.name, frame, allow_registry_cache=True)
            for service in services:
                self.store.precompute_feature_service(service)
            offered += len(rows)
        return offered
