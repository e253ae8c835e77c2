"""The stream pipeline under faults, against real Redis servers and real Feast.

- Redis restarted with nothing on disk: the processor recreates its consumer group, replays what
  the online store lost, and a client's retried batch is logged once (dedupe checked against the
  log); /readyz names a processor that makes no progress;
- an undecodable stream entry goes to the dead-letter stream and processing goes on;
- a broker outage is retried with backoff and jitter, one log line per failure streak.

A test that restarts Redis starts its own redis-server on a free port.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import redis
import uvicorn
from starlette.applications import Starlette
from test_streaming import (
    KEY,
    SECRET,
    StreamWorld,
    as_payload,
    drain,
    good_event,
    logged_event_ids,
    make_world,
    offline_values,
    online_values,
    post,
)

from feastflow.event_log import write_partitions
from feastflow.privacy import hash_user_id
from feastflow.processor import (
    SEEDED_MARKER,
    MemoryStateStore,
    RedisStateStore,
    StreamProcessor,
    build_processor,
)
from feastflow.realtime import RealtimeFeatures
from feastflow.settings import FEATURE_REPO
from feastflow.spec import load_spec
from feastflow.store import open_store
from feastflow.stream import (
    MemoryEventStream,
    RedisEventStream,
    StreamUnavailable,
    hash_tagged,
    open_event_stream,
)
from pipelines.demo import free_port
from pipelines.features import compute_feature_tables
from serving.app import create_app
from serving.events import EventIntake
from serving.settings import ServingSettings

BATCH_FEATURE = "user_app_usage_fv:opens_28d"  # a batch view: materialized, never pushed



class RedisServer:
    """A redis-server of this test on a free port, keeping nothing on disk (like the issue's)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.process = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        wait_until(lambda: _pings(client), 30, "redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        """SIGKILL and start again: every key is gone."""
        self.kill()
        self.start()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def wait_until(condition: Callable[[], object], seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} within {seconds:.0f} s")
        time.sleep(0.05)


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


def submit(intake: EventIntake, events: list[dict[str, Any]]) -> int:
    """Append in batches of 100 as a client would, retrying while the broker is unreachable."""
    accepted = 0
    for i in range(0, len(events), 100):
        deadline = time.monotonic() + 30
        while True:
            try:
                accepted += intake.submit(events[i:i + 100]).accepted
                break
            except StreamUnavailable:
                assert time.monotonic() < deadline, "the stream stayed unavailable"
                time.sleep(0.1)
    return accepted


def batch_values(world: StreamWorld, pairs: list[tuple[str, str]]) -> list[Any]:
    rows = [{"user_id": u, "app": a} for u, a in pairs]
    return open_store(world.settings, "next_app").get_online_features(
        [BATCH_FEATURE], rows).to_dict()["opens_28d"]


# --- item 1: Redis restarted -----------------------------------------------------------------


def test_after_a_redis_restart_the_processor_recovers_what_the_online_store_lost(
        tmp_path: Path, redis_server: RedisServer) -> None:
    world = make_world(tmp_path, db=0, seed=53, redis_base=redis_server.base)
    settings, spec = world.settings, world.spec
    intake = EventIntake(open_event_stream(settings, spec.name), SECRET, spec.event_log)
    users = [hash_user_id(u, SECRET) for u in sorted(world.history["user_id"].unique())]
    pairs = sorted({(hash_user_id(u, SECRET), a) for u, a in
                    zip(world.history["user_id"], world.history["app"], strict=True)})[:30]
    materialized = batch_values(world, pairs)
    assert any(v is not None for v in materialized)
    payload = as_payload(world.live)
    first, second = payload[: len(payload) // 2], payload[len(payload) // 2:]
    all_ids = set(world.history["event_id"]) | set(world.live["event_id"])

    processor = build_processor(settings, spec)
    stop = threading.Event()
    thread = threading.Thread(target=processor.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert submit(intake, first) == len(first)
        first_ids = {e["event_id"] for e in first}
        wait_until(lambda: first_ids <= set(logged_event_ids(settings)), 120,
                   "the first half was not logged")
        redis_server.restart()  # group, states, online rows and dedupe keys: all gone

        assert submit(intake, first[:10]) == 10  # a client retrying: Redis forgot these ids
        assert submit(intake, second) == len(second)
        wait_until(lambda: set(logged_event_ids(settings)) >= all_ids, 120,
                   "the processor made no progress after the restart")
        wait_until(lambda: batch_values(world, pairs) == materialized, 60,
                   "the batch views were not restored")
    finally:
        stop.set()
        thread.join(60)

    ids = logged_event_ids(settings)
    assert not ids.duplicated().any(), ids[ids.duplicated()].tolist()[:5]
    assert set(ids) == all_ids
    # the real-time features online are the offline point-in-time values over the whole log
    compute_feature_tables(settings, spec)
    live_pairs = sorted({(hash_user_id(u, SECRET), a) for u, a in
                         zip(world.live["user_id"], world.live["app"], strict=True)})
    at = world.live["timestamp"].max() + pd.Timedelta(microseconds=1)
    assert online_values(settings, users, live_pairs) == offline_values(settings, users,
                                                                        live_pairs, at)


def test_a_processor_started_after_a_redis_restart_restores_the_online_store(
        tmp_path: Path, redis_server: RedisServer) -> None:
    # A machine rebooted: Redis and the processor come back together, the processor first.
    world = make_world(tmp_path, db=0, seed=59, redis_base=redis_server.base)
    settings, spec = world.settings, world.spec
    users = [hash_user_id(u, SECRET) for u in sorted(world.history["user_id"].unique())]
    pairs = sorted({(hash_user_id(u, SECRET), a) for u, a in
                    zip(world.history["user_id"], world.history["app"], strict=True)})[:30]
    build_processor(settings, spec).seed_from_log()  # once: the processor has run here
    before = (batch_values(world, pairs), online_values(settings, users, pairs))
    redis_server.restart()
    processor = build_processor(settings, spec)
    processor.seed_from_log()
    assert (batch_values(world, pairs), online_values(settings, users, pairs)) == before


# --- item 1: /readyz and item 2: dead letters ------------------------------------------------


@pytest.fixture(scope="module")
def fault_world(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> StreamWorld:
    return make_world(tmp_path_factory.mktemp("faults"), db=11, seed=61)


@dataclass
class Served:
    """The app in uvicorn on a real port (a thread of this process) and an HTTP client to it."""

    app: Starlette
    http: httpx.Client


@pytest.fixture()
def served(fault_world: StreamWorld) -> Iterator[Served]:
    settings = ServingSettings(**{**fault_world.settings.model_dump(), "api_key": KEY,
                                  "registry_poll_seconds": 0, "log_json": False})
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 120, "the server did not start")
    assert server.started
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield Served(app, http)
    finally:
        server.should_exit = True
        thread.join(30)


def readyz_reasons(client: httpx.Client) -> list[str]:
    return client.get("/readyz").json()["reasons"]


def test_an_undecodable_entry_goes_to_the_dead_letter_stream_and_processing_goes_on(
        fault_world: StreamWorld, served: Served) -> None:
    http = served.http
    settings, spec = fault_world.settings, fault_world.spec
    client = redis.Redis.from_url(settings.redis_url)
    key = settings.event_stream_key(spec.name)
    assert post(http, [good_event("dl-1"), good_event("dl-2")]).status_code == 202
    not_json = client.xadd(key, {"e": b"{not json"}).decode()
    no_e = client.xadd(key, {"x": b"1"}).decode()
    assert post(http, [good_event("dl-3")]).status_code == 202

    processor = build_processor(settings, spec)
    drain(processor)

    assert {"dl-1", "dl-2", "dl-3"} <= set(logged_event_ids(settings))
    assert open_event_stream(settings, spec.name).backlog() == 0
    dead = {fields[b"id"].decode(): fields
            for _, fields in client.xrange(hash_tagged(key) + ":dead")}
    assert set(dead) == {not_json, no_e}
    assert dead[not_json][b"entry"] == b"{not json"
    assert b"JSON" in dead[not_json][b"error"] or b"json" in dead[not_json][b"error"]
    assert b"'e'" in dead[no_e][b"error"]
    assert all(pd.Timestamp(f[b"time"].decode()).tzinfo is not None for f in dead.values())
    assert "dead_letters" in readyz_reasons(http)
    metrics = http.get("/metrics").text
    assert 'feastflow_stream_dead_letters{use_case="next_app"} 2.0' in metrics


def test_an_undecodable_entry_left_pending_by_a_crash_does_not_block_recovery(
        fault_world: StreamWorld) -> None:
    settings, spec = fault_world.settings, fault_world.spec
    client = redis.Redis.from_url(settings.redis_url)
    key = settings.event_stream_key(spec.name)
    stream = open_event_stream(settings, spec.name)
    drain(build_processor(settings, spec))
    dead_before = client.xlen(hash_tagged(key) + ":dead")
    client.xadd(key, {"x": b"no payload"})
    assert len(stream.read(10, 10)) == 1  # taken by processor-1, which then "crashed"
    assert client.xpending(key, "feastflow-stream")["pending"] == 1

    processor = build_processor(settings, spec)
    processor.recover()
    assert client.xpending(key, "feastflow-stream")["pending"] == 0
    assert client.xlen(hash_tagged(key) + ":dead") == dead_before + 1


def test_readyz_reports_a_processor_that_makes_no_progress(
        fault_world: StreamWorld, served: Served) -> None:
    http = served.http
    settings, spec = fault_world.settings, fault_world.spec
    drain(build_processor(settings, spec))
    intake = served.app.state.core.use_cases[spec.name].intake
    intake.watch.stall_seconds = 0.5
    assert "processor_stalled" not in readyz_reasons(http)
    assert post(http, [good_event("stall-1")]).status_code == 202
    # no processor runs: the backlog stays and nothing moves
    wait_until(lambda: "processor_stalled" in readyz_reasons(http), 30,
               "/readyz did not report the stalled processor")
    drain(build_processor(settings, spec))
    wait_until(lambda: "processor_stalled" not in readyz_reasons(http), 30,
               "/readyz still reports a stall after the processor caught up")


# --- item 7: retry with backoff --------------------------------------------------------------


def bare_processor(stream: RedisEventStream, events_dir: Path, **kwargs: Any) -> StreamProcessor:
    """A processor on a real Redis stream whose online store is a no-op (only retries matter)."""
    spec = load_spec("next_app", FEATURE_REPO)
    return StreamProcessor(RealtimeFeatures(spec), stream, MemoryStateStore(),
                           lambda tables: None, events_dir, **kwargs)


def test_the_retry_delay_backs_off_exponentially_with_jitter(tmp_path: Path) -> None:
    stream = RedisEventStream("redis://127.0.0.1:1/0", "unused")
    processor = bare_processor(stream, tmp_path, retry_seconds=0.1, retry_max_seconds=5.0)
    for failures in range(1, 12):
        bound = min(5.0, 0.1 * 2 ** failures)
        delays = [processor.retry_delay(failures) for _ in range(20)]
        assert all(bound / 2 <= d <= bound for d in delays), (failures, delays)
        assert len(set(delays)) > 1  # jittered: processors restarted together do not sync up


def test_a_broker_outage_is_one_log_line_per_failure_streak(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path)  # not started yet: the broker is down
    stream = RedisEventStream(server.base + "/0", "outage", claim_idle_ms=0)
    processor = bare_processor(stream, tmp_path / "events", retry_seconds=0.01,
                               retry_max_seconds=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=processor.run, args=(stop,), daemon=True)
    caplog.set_level(logging.INFO, logger="feastflow.processor")
    thread.start()
    try:
        wait_until(lambda: processor.stats.failures >= 5, 60, "the processor did not retry")
        server.start()
        wait_until(lambda: any("recovered" in r.getMessage() for r in caplog.records), 60,
                   "no recovery line")
    finally:
        stop.set()
        thread.join(30)
        server.kill()
    lines = [r for r in caplog.records if r.name == "feastflow.processor"]
    failing = [r for r in lines if r.levelno >= logging.WARNING]
    assert len(failing) == 1, [r.getMessage() for r in failing]
    assert failing[0].exc_info is None  # one line, not a traceback per attempt
    assert "ConnectionError" in failing[0].getMessage()
    [recovered] = [r for r in lines if "recovered" in r.getMessage()]
    assert f"{processor.stats.failures} failures" in recovered.getMessage()


def test_a_processor_that_cannot_restore_the_batch_views_says_so_and_goes_on(
        tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    events_dir = tmp_path / "events"
    events_dir.mkdir()
    (events_dir / SEEDED_MARKER).write_text("seeded before the restart\n")

    def restore() -> None:
        raise FileNotFoundError("no feature tables in /nowhere: run `feastflow features` first")

    spec = load_spec("next_app", FEATURE_REPO)
    client = redis.Redis.from_url(redis_server.base + "/0")
    processor = StreamProcessor(
        RealtimeFeatures(spec), RedisEventStream(redis_server.base + "/0", "s"),
        RedisStateStore(client, spec.name), lambda tables: None, events_dir,
        restore_online=restore)
    caplog.set_level(logging.INFO, logger="feastflow.processor")
    processor.seed_from_log()
    [cannot] = [r for r in caplog.records if "CANNOT restore" in r.getMessage()]
    assert cannot.levelno == logging.ERROR and "feastflow materialize" in cannot.getMessage()
    assert RedisStateStore(client, spec.name).is_seeded()  # processing goes on


def test_the_embedded_stream_dead_letters_too(tmp_path: Path) -> None:
    stream = MemoryEventStream()
    spec = load_spec("next_app", FEATURE_REPO)
    contract = spec.event_log
    intake = EventIntake(stream, SECRET, contract)
    assert intake.submit([good_event("m-1")]).accepted == 1
    stream.append([("m-bad", b"[1, 2")])
    assert intake.submit([good_event("m-2")]).accepted == 1
    processor = StreamProcessor(RealtimeFeatures(spec), stream, MemoryStateStore(),
                                lambda tables: None, tmp_path / "events")
    drain(processor)
    assert processor.stats.applied == 2 and processor.stats.dead_letters == 1
    [dead] = stream.dead_letters
    assert dead["entry"] == b"[1, 2" and "JSON" in str(dead["error"])
    status = stream.status()
    assert (status.backlog, status.dead_letters) == (0, 1)
    assert intake.stream_reasons()[0] == ["dead_letters"]


class _StartedStream(MemoryEventStream):
    """An in-process stream whose dedupe memory started at a chosen time."""

    def __init__(self, started: float | None) -> None:
        super().__init__()
        self.started = started

    def dedupe_started(self) -> float | None:
        return self.started


def test_only_events_timed_before_the_dedupe_memory_began_are_checked_against_the_log(
        tmp_path: Path) -> None:
    # A retry the broker forgot was appended before its memory began, so intake saw it timed at
    # most `max_future` later: events timed after that (+ a clock margin) need no log read.
    spec = load_spec("next_app", FEATURE_REPO)
    events_dir = tmp_path / "events"
    began = pd.Timestamp("2026-06-01 12:00:00", tz="UTC")
    future = pd.Timedelta(spec.event_log.max_future)
    early, late = began - pd.Timedelta(minutes=10), began + future + pd.Timedelta(minutes=2)
    logged = pd.DataFrame({"event_id": ["early", "late"],
                           "timestamp": pd.Series([early, late]).astype("datetime64[us, UTC]")})
    write_partitions(logged, events_dir)
    incoming = pd.DataFrame({
        "event_id": ["early", "late", "new"],
        "timestamp": pd.Series([early, late, early]).astype("datetime64[us, UTC]")})

    def kept(started: float | None) -> list[str]:
        processor = StreamProcessor(RealtimeFeatures(spec), _StartedStream(started),
                                    MemoryStateStore(), lambda tables: None, events_dir)
        return processor._not_logged(incoming)["event_id"].tolist()

    assert kept(began.timestamp()) == ["late", "new"]  # "late" could not be a forgotten retry
    # a memory that began later: "late" may be one, the log has it
    assert kept((began + pd.Timedelta(minutes=5)).timestamp()) == ["new"]
    assert kept(None) == ["early", "late", "new"]  # memory complete: no read at all
