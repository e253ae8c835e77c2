"""The stream processor's online writes (the shared Redis writer, one round trip per batch) equal
what Feast's own `FeatureStore.push` writes: the same Redis hashes byte for byte, the same values
through Feast's `get_online_features`; newer wins; the push routing is read once per registry TTL.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import redis
from conftest import feast_hashes
from feast.data_source import PushMode
from test_streaming import SECRET, StreamWorld, as_payload, drain, make_world

from feastflow.privacy import hash_user_id
from feastflow.processor import MemoryStateStore, StreamProcessor
from feastflow.realtime import RealtimeFeatures, Row
from feastflow.realtime_online import FeastRowWriter, PushRoutes, RedisRowWriter, Tables
from feastflow.settings import Settings
from feastflow.store import open_store
from feastflow.stream import MemoryEventStream
from serving.events import EventIntake

OURS_DB, FEAST_DB = 8, 9


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> StreamWorld:
    return make_world(tmp_path_factory.mktemp("online"), db=OURS_DB, seed=71, users=6, days=3)


def feast_settings(world: StreamWorld) -> Settings:
    """The same home and registry, another Redis db: where Feast's push writes."""
    url = world.settings.redis_url.rsplit("/", 1)[0] + f"/{FEAST_DB}"
    redis.Redis.from_url(url).flushdb()
    return world.settings.model_copy(update={"redis_url": url})


def run_processor(world: StreamWorld, events_dir: Path, write_online: object) -> StreamProcessor:
    """A processor over the live events, out of order and in small batches, seeded from the
    history log copied to `events_dir`."""
    shutil.copytree(world.settings.events_dir("next_app"), events_dir)
    stream = MemoryEventStream()
    payload = as_payload(world.live)
    intake = EventIntake(stream, SECRET, world.spec.event_log)
    for i in range(0, len(payload), 37):
        assert intake.submit(payload[i:i + 37]).accepted == len(payload[i:i + 37])
    processor = StreamProcessor(RealtimeFeatures(world.spec), stream, MemoryStateStore(),
                                write_online, events_dir, batch_events=50)  # type: ignore[arg-type]
    processor.seed_from_log()
    drain(processor)
    return processor


def pushed_hashes(url: str) -> dict[bytes, dict[bytes, bytes]]:
    return feast_hashes(redis.Redis.from_url(url))


def test_processor_rows_equal_feast_push_byte_for_byte_and_through_feast(
        world: StreamWorld, tmp_path: Path) -> None:
    ours_store = open_store(world.settings, "next_app")
    rt = RealtimeFeatures(world.spec)
    writer = RedisRowWriter.for_store(rt, ours_store, world.settings.redis_url)
    theirs = feast_settings(world)
    feast_store = open_store(theirs, "next_app")

    def feast_push(tables: Tables) -> None:
        for table, rows in tables.items():
            if rows:
                feast_store.push(rt.push_sources[table], rt.rows_frame(rows, table),
                                 to=PushMode.ONLINE)

    ours = run_processor(world, tmp_path / "ours", writer.write)
    run_processor(world, tmp_path / "feast", feast_push)
    assert ours.stats.applied == len(world.live) and writer.written > 0
    assert writer.routes.reads == 1  # the registry was read once, not at every batch

    # Redis: every hash Feast's push wrote holds the same fields and bytes in ours (which also
    # holds the batch views materialized into the same keys)
    expected = pushed_hashes(theirs.redis_url)
    got = pushed_hashes(world.settings.redis_url)
    assert expected and set(expected) <= set(got)
    for key, fields in expected.items():
        assert {f: v for f, v in got[key].items() if f in fields} == fields, key

    # Feast's online read: the same values for every user and every (user, app) pair
    users = sorted({hash_user_id(u, SECRET) for u in world.live["user_id"]})
    pairs = sorted({(hash_user_id(u, SECRET), a) for u, a in
                    zip(world.live["user_id"], world.live["app"], strict=True)})
    for view, rows in (("user_last_app_fv", [{"user_id": u} for u in users]),
                       ("user_app_recency_fv", [{"user_id": u, "app": a} for u, a in pairs])):
        features = [f"{view}:{f.name}" for f in ours_store.get_feature_view(view).features]
        read_ours = ours_store.get_online_features(features, rows).to_dict()
        read_feast = feast_store.get_online_features(features, rows).to_dict()
        assert read_ours == read_feast, view
        assert all(v is not None for v in read_ours[features[0].split(":")[1]])


def test_a_batch_sent_again_or_an_older_row_changes_nothing(world: StreamWorld) -> None:
    store = open_store(world.settings, "next_app")
    rt = RealtimeFeatures(world.spec)
    writer = RedisRowWriter.for_store(rt, store, world.settings.redis_url)
    user = hash_user_id("newer-wins-user", SECRET)
    at = pd.Timestamp("2026-03-01T10:00:00Z")

    def row(app: str, stamp: pd.Timestamp) -> Tables:
        values = {"user_id": user, "last_app": app, "last_unlock_unix": int(stamp.timestamp()),
                  "recent_apps": [app], "unlocks_5m": 1, "unlocks_1h": 1, "distinct_apps_1h": 1}
        return {rt.entity_table: [Row(rt.entity_table, stamp.value // 1000, values)]}

    def last_app() -> str:
        return store.get_online_features(["user_last_app_fv:last_app"],
                                         [{"user_id": user}]).to_dict()["last_app"][0]

    written = writer.written
    writer.write(row("mail", at))
    assert writer.written == written + 1 and last_app() == "mail"
    writer.write(row("mail", at))  # re-sent after a failure: not newer, not written
    writer.write(row("maps", at - pd.Timedelta(seconds=1)))  # older: skipped
    assert writer.written == written + 1 and last_app() == "mail"
    writer.write(row("chat", at + pd.Timedelta(microseconds=1)))
    assert last_app() == "chat"


def test_the_push_routing_is_read_again_only_after_the_registry_ttl(world: StreamWorld) -> None:
    store = open_store(world.settings, "next_app")
    now = [0.0]
    routes = PushRoutes(store, clock=lambda: now[0])
    assert routes.ttl_seconds == store.config.registry.cache_ttl_seconds
    views, services = routes.route("user_last_app_push")
    assert [v.name for v in views] == ["user_last_app_fv"] and services == []
    routes.route("user_app_recency_push")
    now[0] = routes.ttl_seconds - 0.1
    routes.route("user_last_app_push")
    assert routes.reads == 1
    now[0] = routes.ttl_seconds + 0.1
    routes.route("user_last_app_push")
    assert routes.reads == 2
    with pytest.raises(Exception, match="no_such_push"):
        routes.route("no_such_push")


def test_feasts_own_writer_path_writes_what_push_writes(world: StreamWorld) -> None:
    # (the embedded profile's path, and Redis Cluster's): rows through write_to_online_store
    theirs = feast_settings(world)
    store = open_store(theirs, "next_app")
    rt = RealtimeFeatures(world.spec)
    history = world.history.assign(user_id=world.history["user_id"].map(
        lambda u: hash_user_id(u, SECRET)))
    tables: Tables = {t: [] for t in rt.push_sources}
    for row in rt.batch_rows(history):
        tables[row.table].append(row)
    writer = FeastRowWriter(rt, store)
    assert writer.write(tables) == sum(len(rows) for rows in tables.values())
    ours = pushed_hashes(theirs.redis_url)
    redis.Redis.from_url(theirs.redis_url).flushdb()
    for table, frame in rt.batch_tables(history).items():
        store.push(rt.push_sources[table], frame, to=PushMode.ONLINE)
    assert ours and ours == pushed_hashes(theirs.redis_url)
    assert writer.routes.reads == 1
