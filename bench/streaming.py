"""Streaming benchmark: POST /v1/{use case}/events at a fixed rate -> Redis Stream ->
`feastflow stream` -> Feast push -> Redis, measuring each event's freshness through Feast's own
online read.

    python bench/streaming.py [--use-case next_app|fraud] [--rate 2000] [--duration 30]
                              [--warmup 5] [--batch 100] [--users 4000] [--work DIR]
    python bench/streaming.py --rates 2000,3000,5000,8000 [--duration 15] ...
    python bench/streaming.py --partitions 1,2 [--rates 2000,5000] ...

Setup: a private redis-server on a free port; a Redis-profile home of the use case with a small
history (ingest, features, apply: the Feast registry and push sources): next_app's generator, 50
users over 3 days; fraud's, the first 7 days of the tests' small card world (tests/test_fraud.py,
2,894 payments of 200 cards); `feastflow serve` (the API) and `feastflow stream` (the processor)
as child processes, as in production. The stream's dedupe
memory is marked as begun one TTL ago, as on a broker that has been running; `--fresh-broker`
leaves it new, as in the minutes after a broker restart, when the processor also looks every
event up in the log (a retry the broker forgot).

Load: an open-loop generator posts --batch events every batch/rate seconds (never waiting for
answers; at most 32 posts in flight), spread over --users simulated users (fraud: cards, each
payment at terminal card % 10,000, `tx-<id>` ids of the run's own); each user's events are one
second apart in event time, so the spec's `realtime.freshness_feature` (next_app
`user_last_app_fv:last_unlock_unix`, fraud `customer_payments_fv:last_payment_unix`, the card's
latest payment folded by `customer_payments`) says which of them is applied. A poller, in a
process of its own (its reads held the generator's GIL: POST latencies measured the bench), reads
that feature with `FeatureStore.get_online_features` for every user
with events outstanding, back to back; an event's freshness is the end of the first read that shows it
minus the moment its POST was acknowledged (202); `send_to_visible` counts from the moment the
client sent it (the fair figure against Feast's push, which answers only after writing). Events
of the --warmup seconds count for the checks, not for the figures.

Checks, after the load: every accepted event became visible (else `lost`); the processor's states
count each event once (`double_applied`, `missing_in_state`); the offline event log holds each event
of the run's users once (`double_logged`, `missing_in_log`), after the processor's graceful stop
(SIGTERM).

Peer, in the same run once ours is stopped: Feast's own push server (`feast serve`, POST /push)
driven at the same rate by the same generator, with the entity table's rows computed by the client
with the use case's function (no validation, no durable stream, no offline log: a subset of our
path), polled the same way. next_app's client folds each event alone, as it always has (a
one-event window: the row's shape and its freshness feature right, its counts not); fraud's keeps
each card's window, so it pushes the very row `customer_payments` gives the processor (the card's
payments of the last 30 days, one more at each payment: a row that grows as ours does).

Prints one JSON object: {"events_per_s", "freshness_p50_ms", "freshness_p99_ms", "lost",
"double_applied", "ours": {...}, "feast_push": {...}, "send_to_visible_p99_ratio": feast / ours}.
Each side also reports the CPU its processes spent per event accepted (`server_cpu_us_per_event`,
`processor_cpu_us_per_event`, `redis_cpu_us_per_event`: user + system time from /proc, over the
load and its drain; Redis's includes the poller's reads), which a loaded machine stretches far
less than it stretches latencies.

`--rates` sweeps ours alone (no peer) through the rates, one after the other on the same server
and processor (each rate its own users and event ids), and prints one JSON line per rate,
{"rate", "events_per_s", "freshness_p50_ms", "freshness_p99_ms", "post_p50_ms", "post_p99_ms",
"lost", "double_applied", "sustained"}, then {"highest_sustained_rate", "rates"}: sustained means
at least 95 % of the offered rate achieved, freshness p99 <= 1 s and nothing lost or doubled.

`--partitions 1,2` runs the sweep (or the one --rate) once per partition count, each on a fresh
Redis and home, with the stream over that many Redis Streams and as many `feastflow stream`
processes (each takes one partition's lease); every line carries its "partitions", and the last
gives the highest sustained rate per count. `processor_cpu_us_per_event` sums the processors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import zlib
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import pandas as pd
from harness import (
    PROJECT_ROOT,
    Process,
    RedisServer,
    feastflow_cmd,
    free_port,
    home_env,
    log,
    start_feast_serve,
)

sys.path.insert(0, str(PROJECT_ROOT))  # run as a script from anywhere

from feastflow.privacy import hash_user_id
from feastflow.realtime import EntityState, RealtimeFeatures
from feastflow.settings import FEATURE_REPO, Settings
from feastflow.spec import ModelSpec, load_spec
from feastflow.stream import RedisEventStream, open_event_stream

API_KEY = "bench-streaming-key"
SECRET = "bench-streaming-secret"
MAX_IN_FLIGHT = 32
MARKER = ".bench_streaming"  # a --work folder holding it is emptied before a run
BASE_UNIX = 1_790_000_000  # event time of every user's first event (2026-09-21)


def raw_user(prefix: str, user: int) -> str:
    """The raw id of simulated user (or card) number `user`."""
    return f"{prefix}-user-{user:05d}"


def event_time(n: int) -> str:
    """The n-th event time of every simulated user: n seconds after BASE_UNIX, ISO 8601."""
    return pd.Timestamp(BASE_UNIX + n, unit="s", tz="UTC").isoformat()


def next_app_event(prefix: str, user: int, n: int) -> dict[str, Any]:
    """The n-th event of simulated user `user`, n seconds after BASE_UNIX."""
    ts = event_time(n)
    return {"event_id": f"{prefix}-{user}-{n}", "user_id": raw_user(prefix, user),
            "timestamp": ts, "app": ("mail", "maps", "chat", "camera", "music")[(user + n) % 5],
            "secs_since_prev_unlock": 1.0, "session_seconds": 30.0, "location": "home",
            "battery": 80, "charging": False, "network": "wifi", "os_version": "android-14"}


def fraud_event(prefix: str, user: int, n: int) -> dict[str, Any]:
    """The n-th payment of simulated card `user`, n seconds after BASE_UNIX. Its transaction id
    (the contract wants `tx-<int>`) is unique per run prefix: crc32(prefix) + 1 billions, plus
    n * 100,000 + user, above the history's ids. Its label is 0: the contract requires one."""
    if user >= 100_000 or n >= 10_000:
        raise ValueError("fraud payments number at most 100,000 cards x 10,000 payments each")
    tx = (zlib.crc32(prefix.encode()) + 1) * 1_000_000_000 + n * 100_000 + user
    return {"event_id": f"tx-{tx}", "transaction_id": tx, "customer_id": raw_user(prefix, user),
            "terminal_id": user % 10_000, "timestamp": event_time(n),
            "tx_amount": (user * 31 + n * 17) % 20_000 / 100 + 1, "tx_fraud": 0}


def next_app_history(settings: Settings) -> pd.DataFrame:
    """50 generated users over 3 days."""
    from feature_repo.next_app.world import generate_events

    return generate_events(users=50, days=3, seed=5)


def fraud_history(settings: Settings) -> pd.DataFrame:
    """The first 7 days of the tests' small card world (200 cards at 30 terminals), written
    where the use case's loader reads the book's data and read back through that loader."""
    sys.path.insert(0, str(PROJECT_ROOT / "tests"))
    from test_fraud import write_book_world

    from feature_repo.fraud.data import raw_events

    write_book_world(settings.data_dir)
    raw = raw_events(settings.data_dir)
    return raw[raw["timestamp"] < raw["timestamp"].min() + pd.Timedelta(days=7)]


@cache
def use_case_spec(use_case: str) -> ModelSpec:
    """A use case's model.yaml, read once."""
    return load_spec(use_case, FEATURE_REPO)


@dataclass(frozen=True)
class UseCase:
    """What the bench generates for a use case; the rest (entity, freshness feature, push
    source) its model.yaml says."""

    name: str
    event: Callable[[str, int, int], dict[str, Any]]  # (run prefix, user, n) -> its n-th event
    history: Callable[[Settings], pd.DataFrame]  # the home's raw events
    # the peer's client folds each user's events it sent into the row, as the processor does
    # (else each event alone: the row's shape and freshness feature right, its counts not)
    peer_keeps_state: bool

    @property
    def spec(self) -> ModelSpec:
        """The use case's spec (model.yaml)."""
        return use_case_spec(self.name)

    @property
    def feature(self) -> str:
        """`view:feature` holding each user's last applied event time (Unix seconds)."""
        feature = (self.spec.realtime and self.spec.realtime.freshness_feature)
        if not feature:
            raise ValueError(f"{self.name}: the bench reads realtime.freshness_feature")
        return feature


USE_CASES = {
    "next_app": UseCase("next_app", next_app_event, next_app_history, peer_keeps_state=False),
    "fraud": UseCase("fraud", fraud_event, fraud_history, peer_keeps_state=True),
}


def build_home(home: Path, redis_url: str, use_case: UseCase) -> Settings:
    """A Redis-profile home whose log holds a small history; Feast registry applied."""
    from pipelines.feast_ops import apply_repo
    from pipelines.features import compute_feature_tables
    from pipelines.ingest import ingest_frame

    settings = Settings(home=home, profile="redis", redis_url=redis_url, user_hash_secret=SECRET,
                        data_dir=home / "data")
    spec = load_spec(use_case.name, settings.feature_repo)
    ingest_frame(use_case.history(settings), spec.event_log,
                 settings.events_dir(spec.name), SECRET)
    compute_feature_tables(settings, spec)
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the JSON result only
        apply_repo(settings, spec.name)
    return settings


class Tracker:
    """Per user: events acknowledged and not yet seen online, as (event second, ack time)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outstanding: dict[str, deque[tuple[int, float, float, bool]]] = defaultdict(deque)
        self.freshness_ms: list[float] = []  # from the acknowledgement
        self.end_to_end_ms: list[float] = []  # from the moment the client sent it
        self.accepted = 0
        self.sent_per_user: dict[str, int] = defaultdict(int)

    def acknowledged(self, batch: list[tuple[str, int]], sent: float, at: float, counted: bool
                     ) -> None:
        with self.lock:
            for user, second in batch:
                self.outstanding[user].append((second, sent, at, counted))
                self.sent_per_user[user] += 1
            self.accepted += len(batch)

    def users(self) -> list[str]:
        with self.lock:
            return [u for u, q in self.outstanding.items() if q]

    def seen(self, values: dict[str, int | None], at: float) -> None:
        with self.lock:
            for user, second in values.items():
                queue = self.outstanding[user]
                while queue and second is not None and queue[0][0] <= second:
                    _, sent, acked, counted = queue.popleft()
                    if counted:
                        self.freshness_ms.append(max(0.0, (at - acked) * 1000))
                        self.end_to_end_ms.append((at - sent) * 1000)

    def lost(self) -> int:
        with self.lock:
            return sum(len(q) for q in self.outstanding.values())

    def __getstate__(self) -> dict[str, Any]:  # sent back from the poller's process
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()


def poll(home: str, redis_url: str, use_case: str, hashed_of: dict[str, str], acks: Any,
         results: Any, drain_seconds: float) -> None:
    """In a process of its own (the generator's event loop must not wait for this one's reads):
    take the acknowledgements from `acks`, read the feature through Feast for every user with
    events outstanding, back to back; after the None that ends the load, until all are seen or
    `drain_seconds` passed; then send the tracker back on `results`. Both processes time with
    CLOCK_MONOTONIC, one clock for the machine."""
    from feastflow.store import open_store

    settings = Settings(home=Path(home), profile="redis", redis_url=redis_url,
                        user_hash_secret=SECRET)
    feature, entity = USE_CASES[use_case].feature, use_case_spec(use_case).event_log.entity
    name = feature.split(":", 1)[1]
    store = open_store(settings, use_case)
    store.get_online_features([feature], [{entity: "warm-up"}])
    tracker = Tracker()
    raw_of = {h: r for r, h in hashed_of.items()}
    results.put("ready")
    ended_at = None
    while True:
        while True:
            try:
                ack = acks.get_nowait()
            except queue.Empty:
                break
            if ack is None:
                ended_at = time.monotonic()
            else:
                tracker.acknowledged(*ack)
        if ended_at is not None and (not tracker.lost()
                                     or time.monotonic() - ended_at > drain_seconds):
            break
        users = tracker.users()
        if not users:
            time.sleep(0.005)
            continue
        rows = [{entity: hashed_of[u]} for u in users]
        values = store.get_online_features([feature], rows).to_dict()
        at = time.monotonic()
        tracker.seen({raw_of[h]: v for h, v in zip(values[entity], values[name], strict=True)},
                     at)
    results.put(tracker)


Request = Callable[[list[dict[str, Any]], dict[str, str]], tuple[str, dict[str, Any], int]]


def ours_request(use_case: UseCase) -> Request:
    """POST /v1/{use case}/events: raw events; the server validates, hashes and appends them."""
    path = f"/v1/{use_case.name}/events"

    def request(events: list[dict[str, Any]], hashed_of: dict[str, str]
                ) -> tuple[str, dict[str, Any], int]:
        return path, {"events": events}, 202
    return request


def feast_push_request(use_case: UseCase) -> Request:
    """Feast's POST /push: the feature rows themselves, computed by the client with the use case's
    function (no validation, no stream, no offline log) on a one-event window, or with
    `peer_keeps_state` over the user's events it sent, as the processor folds them."""
    fold = RealtimeFeatures(use_case.spec)
    push_source = fold.push_sources[fold.entity_table]
    states: dict[str, EntityState] = {}

    def request(events: list[dict[str, Any]], hashed_of: dict[str, str]
                ) -> tuple[str, dict[str, Any], int]:
        df: dict[str, list[Any]] = defaultdict(list)
        for e in events:
            unix_us = int(pd.Timestamp(e["timestamp"]).value // 1000)
            user = hashed_of[e[fold.entity_key]]
            state = (states.setdefault(user, EntityState()) if use_case.peer_keeps_state
                     else EntityState())
            for row in fold.apply(state, user, state.last_seq + 1, e[fold.event_id_key],
                                  e[fold.value_key], unix_us):
                if row.table == fold.entity_table:
                    for name, value in row.values.items():
                        df[name].append(value)
                    df["event_timestamp"].append(e["timestamp"])
                    df["created_timestamp"].append(e["timestamp"])
        return "/push", {"push_source_name": push_source, "df": df, "to": "online"}, 200
    return request


async def drive(url: str, args: argparse.Namespace, rate: float, acks: Any, prefix: str,
                request: Request, hashed_of: dict[str, str], headers: dict[str, str]
                ) -> dict[str, Any]:
    """Post `batch` of the use case's events every batch/rate seconds for warmup + duration
    seconds."""
    event = USE_CASES[args.use_case].event
    interval = args.batch / rate
    total_posts = int((args.warmup + args.duration) / interval)
    warm_posts = int(args.warmup / interval)
    next_n: dict[int, int] = defaultdict(int)
    user_cursor = 0
    in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
    latencies: list[float] = []
    failures: list[str] = []
    late = 0
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30,
                                 headers=headers) as client:

        async def post(body: list[dict[str, Any]], sent: list[tuple[str, int]], counted: bool
                       ) -> None:
            path, payload, expected = request(body, hashed_of)
            async with in_flight:
                started = time.monotonic()
                try:
                    response = await client.post(path, json=payload)
                except httpx.HTTPError as e:
                    failures.append(repr(e))
                    return
                done = time.monotonic()
                ok = response.status_code == expected and (
                    expected != 202 or response.json()["accepted"] == len(body))
                if not ok:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
                    return
                latencies.append((done - started) * 1000)
                acks.put((sent, started, done, counted))

        tasks = []
        start = time.monotonic()
        measured_from = start + warm_posts * interval
        for k in range(total_posts):
            due = start + k * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -interval:
                late += 1
            body, sent = [], []  # the events, and each one's (raw user, event second)
            for _ in range(args.batch):
                user = user_cursor % args.users
                user_cursor += 1
                body.append(event(prefix, user, next_n[user]))
                sent.append((raw_user(prefix, user), BASE_UNIX + next_n[user]))
                next_n[user] += 1
            tasks.append(asyncio.create_task(post(body, sent, counted=k >= warm_posts)))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - measured_from
    lat = np.array(latencies or [0.0])
    return {"posts": len(tasks), "failures": len(failures), "failure_examples": failures[:3],
            "late_posts": late, "measured_seconds": round(elapsed, 2),
            "post_p50_ms": round(float(np.percentile(lat, 50)), 2),
            "post_p99_ms": round(float(np.percentile(lat, 99)), 2)}


def cpu_seconds(process: Process) -> float:
    """User + system CPU seconds of every live process in the child's process group (the
    server's workers included), from /proc."""
    if process.proc is None:
        return 0.0
    group, total = process.proc.pid, 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[2]) == group:  # pgrp
                total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def run_load(url: str, args: argparse.Namespace, settings: Settings, prefix: str,
             request: Request, headers: dict[str, str], rate: float | None = None,
             processes: dict[str, list[Process]] | None = None
             ) -> tuple[Tracker, dict[str, Any], dict[str, str]]:
    """Drive one server and poll Feast until every acknowledged event is visible (or 30 s)."""
    rate = rate or args.rate
    hashed_of = {raw_user(prefix, u): hash_user_id(raw_user(prefix, u), SECRET)
                 for u in range(args.users)}
    spawn = multiprocessing.get_context("spawn")
    acks, results = spawn.Queue(), spawn.Queue()
    drain_seconds = max(30.0, args.duration)  # an overloaded rate drains late
    poller = spawn.Process(target=poll, args=(str(settings.home), settings.redis_url,
                                              args.use_case, hashed_of, acks, results,
                                              drain_seconds), daemon=True)
    poller.start()
    if results.get(timeout=300) != "ready":
        raise RuntimeError("the poller did not start")
    log(f"{prefix}: driving {rate:.0f} events/s for {args.warmup:.0f} + {args.duration:.0f} s")
    processes = processes or {}
    cpu_before = {name: sum(map(cpu_seconds, group)) for name, group in processes.items()}
    load = asyncio.run(drive(url, args, rate, acks, prefix, request, hashed_of, headers))
    acks.put(None)
    tracker: Tracker = results.get(timeout=drain_seconds + 120)
    poller.join(30)
    for name, group in processes.items():  # CPU per event, whatever else loads the machine
        used = sum(map(cpu_seconds, group)) - cpu_before[name]
        load[f"{name}_cpu_us_per_event"] = round(used / max(tracker.accepted, 1) * 1e6, 1)
    return tracker, load, hashed_of


def figures(tracker: Tracker, load: dict[str, Any]) -> dict[str, Any]:
    """Rate and freshness of the measured (post-warm-up) events."""
    def percentile(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)), 1) if values else None

    fresh, end_to_end = tracker.freshness_ms, tracker.end_to_end_ms
    return {"events_per_s": round(len(fresh) / load["measured_seconds"], 1),
            "freshness_p50_ms": percentile(fresh, 50),
            "freshness_p99_ms": percentile(fresh, 99),
            "freshness_max_ms": percentile(fresh, 100),
            "send_to_visible_p50_ms": percentile(end_to_end, 50),
            "send_to_visible_p99_ms": percentile(end_to_end, 99),
            "measured_events": len(tracker.freshness_ms), "accepted": tracker.accepted}


def check_log_and_state(settings: Settings, use_case: str, tracker: Tracker,
                        hashed_of: dict[str, str]) -> dict[str, int]:
    """Each event of the run's users once in the processor's states and once in the offline
    event log."""
    import duckdb
    import redis

    from feastflow.event_log import events_glob, sql_string
    from feastflow.processor import RedisStateStore

    log_spec = use_case_spec(use_case).event_log
    con = duckdb.connect()
    con.register("run_users", pd.DataFrame({"hashed": list(hashed_of.values())}))
    glob = sql_string(events_glob(settings.events_dir(use_case)))
    rows, distinct = con.execute(
        f'SELECT count(*), count(DISTINCT "{log_spec.event_id}") FROM read_parquet({glob}, '
        f'hive_partitioning = false) WHERE "{log_spec.entity}" IN (SELECT hashed FROM run_users)'
    ).fetchone()
    states = RedisStateStore(redis.Redis.from_url(settings.redis_url), use_case).get(
        hashed_of[u] for u in tracker.sent_per_user)
    applied = {u: states[hashed_of[u]].applied for u in tracker.sent_per_user}
    return {
        "double_applied": sum(max(0, applied[u] - n) for u, n in tracker.sent_per_user.items()),
        "missing_in_state": sum(max(0, n - applied[u]) for u, n in tracker.sent_per_user.items()),
        "double_logged": int(rows - distinct),
        "missing_in_log": int(tracker.accepted - distinct),
    }


def ours_result(settings: Settings, use_case: str, tracker: Tracker, load: dict[str, Any],
                hashed_of: dict[str, str], lost: int) -> dict[str, Any]:
    """Figures and checks of one of our runs (after the processor's graceful stop)."""
    checks = check_log_and_state(settings, use_case, tracker, hashed_of)
    return {**figures(tracker, load),
            # the worst sink: never visible online, missing from the states, or from the log
            "lost": max(lost, checks["missing_in_state"], checks["missing_in_log"]),
            "double_applied": max(checks["double_applied"], checks["double_logged"]),
            **load, **checks}


def sweep_line(rate: float, ours: dict[str, Any]) -> dict[str, Any]:
    """One rate of a sweep: achieved rate, freshness, POST latency, and whether it held."""
    p99 = ours["freshness_p99_ms"]
    sustained = (ours["events_per_s"] >= 0.95 * rate and p99 is not None and p99 <= 1000
                 and not ours["lost"] and not ours["double_applied"])
    return {"rate": rate, **{k: ours[k] for k in (
        "events_per_s", "freshness_p50_ms", "freshness_p99_ms", "post_p50_ms", "post_p99_ms",
        "lost", "double_applied", "failures", "late_posts", "server_cpu_us_per_event",
        "processor_cpu_us_per_event", "redis_cpu_us_per_event")}, "sustained": sustained}


def age_dedupe_memory(settings: Settings, partitions: int, use_case: str) -> None:
    """Mark each partition's dedupe memory as begun one TTL ago, as on a broker that has run
    for longer than that: a fresh one makes the processor check the log for every event timed
    within the contract's max_future of its start (the first minutes after a broker restart)."""
    stream = open_event_stream(settings.model_copy(update={"stream_partitions": partitions}),
                               use_case)
    for part in cast(list[RedisEventStream], getattr(stream, "partitions", [stream])):
        part.client.set(part.dedupe_since_key, time.time() - part.dedupe_ttl_seconds - 1)
    stream.close()


def start_ours(work: Path, partitions: int, use_case: str, fresh_broker: bool = False
               ) -> tuple[RedisServer, Settings, str, dict[str, list[Process]]]:
    """A private Redis, a home, `feastflow serve` and one `feastflow stream` per partition."""
    redis_server = RedisServer(free_port(), work / "redis", work / "redis.log")
    redis_server.start()
    log(f"building the {use_case} home under {work}")
    settings = build_home(work / "home", redis_server.url, USE_CASES[use_case])
    if not fresh_broker:
        age_dedupe_memory(settings, partitions, use_case)
    env = {**home_env(settings.home, redis_server.url), "FEASTFLOW_API_KEY": API_KEY,
           "FEASTFLOW_USE_CASE": use_case,  # the processors' use case
           "FEASTFLOW_USER_HASH_SECRET": SECRET, "FEASTFLOW_REGISTRY_POLL_SECONDS": "0",
           "FEASTFLOW_LOG_JSON": "false", "FEASTFLOW_STREAM_PARTITIONS": str(partitions)}
    port = free_port()
    server = Process("serve", [*feastflow_cmd(), "serve", "--port", str(port)],
                     work / "serve.log", env=env, cwd=PROJECT_ROOT).start()
    processors = [Process(f"stream{i}", [*feastflow_cmd(), "stream", "--consumer",
                                         f"processor-{i + 1}"],
                          work / f"stream{i}.log", env=env, cwd=PROJECT_ROOT).start()
                  for i in range(partitions)]
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # a loaded 2-core machine took more than 120 s
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if not server.running() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start:\n{server.tail()}")
        time.sleep(0.2)
    return redis_server, settings, url, {"server": [server], "processor": processors,
                                         "redis": [redis_server.process]}


def run_ours(work: Path, args: argparse.Namespace, partitions: int, processes: list[Process]
             ) -> tuple[Settings, RedisServer, list[tuple[float, dict[str, Any]]]]:
    """Each rate in turn on one server and `partitions` processors; checked after their stop."""
    redis_server, settings, url, children = start_ours(work, partitions, args.use_case,
                                                       args.fresh_broker)
    processes += [p for group in children.values() for p in group if p is not
                  redis_server.process]
    runs = []
    for rate in args.rates or [args.rate]:
        prefix = f"ours{rate:.0f}" if args.rates else "ours"
        tracker, load, hashed_of = run_load(url, args, settings, prefix,
                                            ours_request(USE_CASES[args.use_case]),
                                            {"x-api-key": API_KEY}, rate, children)
        runs.append((rate, tracker, load, hashed_of, tracker.lost()))
    children["server"][0].stop()
    for processor in children["processor"]:
        processor.stop(timeout_s=60)  # SIGTERM: it logs and acknowledges what it holds
    results = [(rate, ours_result(settings, args.use_case, tracker, load, hashed_of, lost))
               for rate, tracker, load, hashed_of, lost in runs]
    return settings, redis_server, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--use-case", choices=sorted(USE_CASES), default="next_app",
                        help="whose events: next_app's app opens or fraud's card payments")
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second")
    parser.add_argument("--rates", type=lambda text: [float(r) for r in text.split(",")],
                        default=None, help="sweep these rates (comma-separated), ours only")
    parser.add_argument("--partitions", type=lambda text: [int(n) for n in text.split(",")],
                        default=[1], help="stream partitions, each with a processor of its "
                        "own (comma-separated: each count measured in turn, ours only)")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=100, help="events per POST")
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--work", type=Path, default=None, help="folder for the run (default: temp)")
    parser.add_argument("--fresh-broker", action="store_true",
                        help="leave the stream's dedupe memory new, as after a broker restart "
                        "(default: begun one TTL ago, as on a broker that has been running)")
    args = parser.parse_args()

    work = (args.work or Path(tempfile.mkdtemp(prefix="bench_streaming_"))).resolve()
    if work.exists() and any(work.iterdir()):
        # a previous run's Redis dump would hold its event ids: every event a duplicate
        if not (work / MARKER).exists():
            raise SystemExit(f"--work {work} is not empty and not a previous run's folder")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).touch()
    processes: list[Process] = []
    servers: list[RedisServer] = []
    try:
        if args.rates or args.partitions != [1]:
            lines = []
            for partitions in args.partitions:
                _, redis_server, results = run_ours(work / f"p{partitions}", args, partitions,
                                                    processes)
                servers.append(redis_server)
                for rate, ours in results:
                    line = {"partitions": partitions, **sweep_line(rate, ours)}
                    lines.append(line)
                    print(json.dumps(line), flush=True)
                redis_server.stop()
            held = [(line["partitions"], line["rate"]) for line in lines if line["sustained"]]
            print(json.dumps({"highest_sustained_rate": {
                n: max((r for p, r in held if p == n), default=None) for n in args.partitions},
                "rates": args.rates or [args.rate], "partitions": args.partitions}))
            return
        settings, redis_server, [(_, ours)] = run_ours(work, args, 1, processes)
        servers.append(redis_server)
        feast_process, feast_url = start_feast_serve(settings.home, redis_server.url, work,
                                                     args.use_case)
        processes.append(feast_process)
        feast_tracker, feast_load, _ = run_load(
            feast_url, args, settings, "feast", feast_push_request(USE_CASES[args.use_case]), {},
            processes={"server": [feast_process], "redis": [redis_server.process]})
        feast_process.stop()
        peer = {**figures(feast_tracker, feast_load), "lost": feast_tracker.lost(), **feast_load}
        print(json.dumps({
            **{k: ours[k] for k in ("events_per_s", "freshness_p50_ms", "freshness_p99_ms", "lost",
                                    "double_applied")},
            "target_rate": args.rate, "ours": ours, "feast_push": peer,
            "send_to_visible_p99_ratio": (
                round(peer["send_to_visible_p99_ms"] / ours["send_to_visible_p99_ms"], 2)
                if peer["send_to_visible_p99_ms"] and ours["send_to_visible_p99_ms"] else None),
        }))
    finally:
        for process in processes:
            process.stop()
        for server in servers:
            server.stop()


if __name__ == "__main__":
    main()
