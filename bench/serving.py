"""Serving benchmark: our prediction server against Feast's own `feast serve`, side by side, and faults.

    python bench/serving.py [--use-case next_app|fraud|movielens|...] [--home DIR [--keep]]
                            [--connections 8 --threads 2 --duration 20 --warmup 5]
                            [--workers 1 [2 ...]]
                            [--rate 500] [--faults] [--tool auto|wrk|python] [--no-feature-cache]
                            [--latency-budget-ms MS]

What follows describes the flagship, next_app (a ranking over a generated world, the default);
a per-event use case with a `loader` (fraud: a classifier over a public data set) differs where
the section "Per-event use cases" below says, a retrieval ranking (movielens) where "Retrieval
use cases" says.

Setup. A private redis-server on a free port, its data in <home>/bench_redis/dump.rdb (stopped with
`redis-cli shutdown save`, so the data outlives a restart and, with --home, the run). The home is a
Redis-profile FEASTFLOW_HOME built by `feastflow demo --users 150 --days 56` (the whole demo, with
its drift, replay and retrain; ~5 min), or --home DIR when it is already built (champion in
<home>/mlflow.db, Feast registry at <home>/feast/registry.db): then `feastflow apply` brings the
registry to this checkout's definitions (an on-demand view's mode changes how fast Feast serves
it), and `feastflow materialize` refills an empty Redis or puts the last days online again. The
run stops unless every request falls within the TTL of the newest daily snapshot online
(check_fresh): our server reads older daily features as missing, which makes a cheaper request.

Requests. The last day of the generated world (the event log under <home>/events, user ids hashed
at ingest; raw ids are recovered by hashing the simulator's ids `user_NNNNN` with the same secret,
or read from <home>/raw/ when raw files are there), replayed one day later: the day the served
daily features are fresh for. Each unlock's own context (location, battery, charging, network,
seconds since the previous unlock) and time of day; --unknown-share of the requests (5%) come
from users the store has never seen. --pool different bodies in all.

Servers, one at a time on the 2 cores: Feast first, then ours.
- `feast serve` (one gunicorn/uvicorn worker, access log off, --feast-max-requests 0: no worker
  recycling; Feast's default 1000 restarts the worker every ~1,000 requests, dropping connections)
  over the same feature repo, registry (a temporary feature_store.yaml points at
  <home>/feast/registry.db, never a copy) and Redis. Two workloads over POST /get-online-features:
  `feast_serve`, the stage-2 read one of our predictions needs (feature service
  next_app_ranker_v1 for the request's candidate rows, up to 22: join keys and request fields as
  the model spec declares them, candidates from the user's online candidate lists as
  feastflow.ranking generates them), and `feast_serve_one_entity`, the stage-1 read
  (next_app_user_v1 for one user and hour), Feast's cheapest request. Known users only; our server
  does the stage-1 read, the stage-2 read and the scoring for each of its answers.
- `feastflow serve` (--server-root: from another source tree) with
  FEASTFLOW_PREDICTION_CACHE_TTL_SECONDS=0 (no L1 prediction cache; --no-feature-cache also sets
  FEASTFLOW_FEATURE_CACHE_TTL_SECONDS=0; --latency-budget-ms sets FEASTFLOW_LATENCY_BUDGET_MS, past
  which a scoring is answered by a fallback), FEASTFLOW_API_KEY and FEASTFLOW_REQUEST_LOG_SAMPLE=0.01;
  ready when GET /readyz is 200 (or, without /readyz, GET /healthz names a model version).
  Workload: POST /v1/predict.

--workers N [M ...]: our server is started once per count (`feastflow serve --workers N`) and
measured the same way each time (open loop and faults with the first count only); the report's
`workers` gives rps and latency per count and `rps_scaling` the last count's rps over the first's.

Load. The same tool and concurrency for every workload: wrk with bench/serving_load.lua (rotates
through the bodies, checks every answer: 2xx and a body with values) or, without wrk, a
keep-alive asyncio generator. A --warmup run, then a --duration run; `rps` counts good answers;
`errors` are non-2xx, socket errors, timeouts and bad bodies. Our good answers include fallbacks
(unknown users always get one; known users when the server sheds load or a dependency fails):
`fallback`, `fallback_known_users` and `full_model_rps` say how many. Then an open-loop run
against ours only: --rate requests/s for --duration s over --open-loop-connections keep-alive
connections, each latency measured from the request's scheduled send time (no coordinated
omission); requests still unanswered 10 s after the schedule ends count as errors. Its generator is
bench/open_loop.c, built with gcc into the temporary folder: a timerfd and epoll loop that writes
each request within microseconds of its due time (at SCHED_FIFO priority 1 when allowed), for a few
percent of a core. Without gcc, or with --tool python, the asyncio generator runs it: its timers
have millisecond granularity (measured: sends 0.8-1.7 ms late at p99, counted as latency).
`send_lateness_p99_ms` says how late the generator itself was.

--faults: an asyncio load of at least --fault-duration (36) s against ours; at 8 s Redis is
stopped (shutdown save), at 18 s restarted, at 24 s the champion's model source is registered
again as a new MLflow version (in a child that imported MLflow before the load started),
`champion` moves to it and POST /admin/reload is called with X-API-Key; the load goes on until
5 s after the reload. Known users' answers say which fallback answered (`fallback`, null = the
full model); recovery is measured from the restart to the first full-model answer and to the
50th of 50 consecutive ones. This leaves a new champion version in the home's registry.

Per-event use cases (classification, regression; e.g. fraud). The home is built by `feastflow
demo -u <use case>` (load the data set, ingest, features, apply, train, promote, materialize;
~4 min for fraud), --users and --days do not apply. Requests are the last 7 days of the data set
(read with the use case's `loader`, raw ids), replayed 7 days later (weekday and hour of day
kept): after the newest row online, as a payment is scored after everything the store knows.
The body is the event's entity, timestamp and context (fraud: customer_id, transaction_id,
terminal_id, tx_amount); --unknown-share of them from entities the store has never seen, with
the event's own context. Feast's workload `feast_serve` is the same read our server makes for
each of its answers: the spec's feature service (fraud_v1) for one entity row, join keys and
request fields as the spec declares them (fraud: the hashed customer_id, terminal_id, tx_amount,
tx_unix), for every request of the pool, unknown entities included (our server scores those
too: the store has none of their rows, the model gets missing values); there is no stage 1, so
no `feast_serve_one_entity`. Before measuring, Feast reads every request's rows once: the run
stops if a row is stamped after its request (the server would score with the future) or if
the last request is beyond the views' TTL of the newest row. A good answer of ours has a
`decision` (classification) or a `prediction`; Feast's has a feature value PRESENT. Our
endpoint is POST /v1/<use case>/predict.

Retrieval use cases (a ranking with `retrieval:` and a `loader`; e.g. movielens). The home is
built by `feastflow demo -u <use case>` as above. Requests: every entity of the data set in turn
(shuffled; --pool bodies, so each user about --pool / users times), each asking for the top k
(`retrieval.k`) at a random second of the day EVENT_REPLAY_SHIFT after the data set's last event;
no unknown entities (movielens' userId is an int: the contract has no free id to invent), so
every answer should be the full model's (`fallback` counts the others). Our server answers from
its three stages: the entity's views, retrieval from the in-memory artifacts (the hnswlib index
among them), the candidates' views, the ranker, the re-ranking. Feast's `feast_serve` is the
same features for the same rows: the ranking service (movielens_ranker_v1) for one row per
candidate, the entity's and the candidate's join keys and request fields as the spec declares
them, the candidates being those our stage 1 retrieves for that entity (the champion loaded as
the server loads it, history and popularity read from the same Redis; about max_candidates rows
a request); `feast_serve_one_entity` is the entity service (movielens_user_v1) for the entity
alone. Before measuring, Feast answers a sample of both: the run stops if a row is stamped after
its request. A good answer of ours has an item (`"movieId"`); Feast's a feature value PRESENT.

Progress goes to stderr; stdout gets one JSON object. Everything started here (servers, Redis,
the temporary folder unless --keep) is stopped and removed at exit, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import secrets
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from feastflow.settings import DEFAULT_USE_CASE, DEV_HASH_SECRET, FEATURE_REPO
from feastflow.spec import ModelSpec, load_spec

LUA = Path(__file__).resolve().with_name("serving_load.lua")
OPEN_LOOP_C = Path(__file__).resolve().with_name("open_loop.c")
PREDICT_PATH, FEAST_PATH = "/v1/predict", "/get-online-features"  # /v1/predict: the default use case
RAW_ID_FORMAT = "user_{:05d}"  # pipelines/generate.py names its simulated users so
EVENT_DAYS = 7  # per-event use cases: the last week of the data set ...
EVENT_REPLAY_SHIFT = pd.Timedelta(days=7)  # ... replayed a week later (weekday and hour kept)
REQUEST_TIMEOUT_S = 10.0
OPEN_LOOP_DRAIN_S = 10.0
FAULT_STOP_S, FAULT_RESTART_S, FAULT_RELOAD_S = 8.0, 18.0, 24.0
STABLE_RUN = 50  # consecutive full-model answers that count as recovered
# --- the home ---------------------------------------------------------------------------------


def champion_version(home: Path, model_name: str) -> str | None:
    """The champion's version from <home>/mlflow.db, read without importing MLflow."""
    db = home / "mlflow.db"
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            row = con.execute("SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?",
                              (model_name, "champion")).fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else str(row[0])


def ensure_home(home: Path, redis: RedisServer, spec: ModelSpec, users: int, days: int) -> None:
    """Build the home with `feastflow demo` unless it is built; refill an empty Redis."""
    env = home_env(home, redis.url)
    built = (champion_version(home, spec.registered_model_name) is not None
             and (home / "feast" / "registry.db").exists()
             and (home / "events" / spec.name).is_dir())
    if not built:
        # a generated world takes its size; a loader's data set is what it is
        size = [] if spec.generator is None else ["--users", str(users), "--days", str(days)]
        log(f"building the home {home}: feastflow demo -u {spec.name} {' '.join(size)} (2-5 min)")
        subprocess.run([*feastflow_cmd(), "demo", "-u", spec.name, *size],
                       env=env, cwd=PROJECT_ROOT, stdout=sys.stderr, stderr=sys.stderr, check=True)
    else:
        # The registry must hold this checkout's definitions (e.g. an on-demand view's mode
        # decides how fast Feast serves it): apply them again, as `feast apply` would.
        log(f"reusing the built home {home}: feastflow apply")
        subprocess.run([*feastflow_cmd(), "apply", "-u", spec.name], env=env, cwd=PROJECT_ROOT,
                       stdout=sys.stderr, stderr=sys.stderr, check=True)
        # An empty Redis gets everything; otherwise the last days go online again, as the nightly
        # job would have put them (see check_fresh).
        since = [] if redis.dbsize() == 0 else [
            "--start", f"{newest_event_day(home, spec.name) - pd.Timedelta(days=2):%Y-%m-%d}"]
        log(" ".join(["feastflow materialize", *since]))
        subprocess.run([*feastflow_cmd(), "materialize", "-u", spec.name, *since], env=env,
                       cwd=PROJECT_ROOT, stdout=sys.stderr, stderr=sys.stderr, check=True)
    log(f"Redis holds {redis.dbsize():,} keys; champion is v{champion_version(home, spec.name)}")


def event_days(home: Path, use_case: str) -> list[Path]:
    """The use case's event log partitions (date=YYYY-MM-DD) in the home, oldest first."""
    days = sorted((home / "events" / use_case).glob("date=*"))
    if not days:
        raise FileNotFoundError(f"no event log under {home / 'events' / use_case}")
    return days


def newest_event_day(home: Path, use_case: str) -> pd.Timestamp:
    """The newest day of the use case's event log."""
    return pd.Timestamp(event_days(home, use_case)[-1].name.partition("=")[2])


# --- the request pool -------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One prediction request (an unlock, a payment) and what a feature server needs to know
    about it: the entity as the store keys it (hashed when the contract hashes it), whether the
    store has seen the entity, and the request's time."""

    body: dict[str, Any]
    user_hash: str
    known: bool
    when: pd.Timestamp


def request_pool(spec: ModelSpec, home: Path, args: argparse.Namespace, secret: str
                 ) -> tuple[list[Request], str]:
    """The request bodies, by the spec's source of events, and where they come from in words."""
    if spec.generator is not None:  # a generated world: its last day's unlocks
        events = last_day_events(home, secret, spec.name)
        pool = build_pool(events, args.pool, args.unknown_share, secret, args.seed)
        return pool, (f"{len(events):,} unlocks of {events['timestamp'].min():%Y-%m-%d} "
                      "(replayed a day later)")
    if spec.loader is not None and spec.retrieval is not None:  # a data set's entities, each asking
        events = data_set_events(spec)
        pool = build_entity_pool(spec, events, args.pool, secret, args.seed)
        return pool, (f"{len({r.user_hash for r in pool}):,} {spec.event_log.entity}s of "
                      f"{len(events):,} events, asking {EVENT_REPLAY_SHIFT.days} days after the "
                      f"last ({events[spec.event_log.timestamp].max():%Y-%m-%d})")
    if spec.loader is not None and spec.per_event:  # a data set: its last week's events
        events = last_week_events(spec)
        seen = logged_entities(home, spec, days=EVENT_DAYS + 1)
        pool = build_event_pool(spec, events, args.pool, args.unknown_share, secret, args.seed, seen)
        if not any(r.known for r in pool):
            raise RuntimeError(f"no {spec.event_log.entity} of the requests is in the home's event "
                               "log: was the home built with another FEASTFLOW_USER_HASH_SECRET?")
        stamps = events[spec.event_log.timestamp]
        return pool, (f"{len(events):,} events of {stamps.min():%Y-%m-%d} .. {stamps.max():%Y-%m-%d} "
                      f"(replayed {EVENT_REPLAY_SHIFT.days} days later)")
    raise ValueError(f"{spec.name}: the bench builds requests for a ranking over a `generator`'s "
                     "world, a `retrieval` ranking or a per-event task over a `loader`'s data set")


def last_day_events(home: Path, secret: str, use_case: str) -> pd.DataFrame:
    """The last full day's unlocks with raw user ids: from <home>/raw/ if there, else the log."""
    raw_files = sorted((home / "raw").glob("*.parquet")) + sorted((home / "raw").glob("*.csv"))
    if raw_files:
        frame = pd.concat([pd.read_parquet(f) if f.suffix == ".parquet" else pd.read_csv(f)
                           for f in raw_files], ignore_index=True)
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601")
        last = frame["timestamp"].dt.floor("D").max()
        return frame[frame["timestamp"] >= last].reset_index(drop=True)
    days = event_days(home, use_case)
    # The last day of the world: a few events streamed after its end (the demo posts some) do
    # not make a day, so take the latest of the last three days with at least half the busiest's.
    frames = [pd.concat([pd.read_parquet(f) for f in sorted(day.glob("hour=*/*.parquet"))],
                        ignore_index=True) for day in days[-3:]]
    busiest = max(len(f) for f in frames)
    frame = [f for f in frames if len(f) >= busiest / 2][-1]
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    raw_of = raw_ids_of(set(frame["user_id"]), secret)
    if not raw_of:
        raise RuntimeError("no hashed user id of the event log matches user_NNNNN: was the home "
                           "built with another FEASTFLOW_USER_HASH_SECRET?")
    frame = frame[frame["user_id"].isin(raw_of)].copy()
    frame["user_id"] = frame["user_id"].map(raw_of)
    return frame.reset_index(drop=True)


def raw_ids_of(hashes: set[str], secret: str, limit: int = 100_000) -> dict[str, str]:
    """hash -> raw id, by hashing the simulator's ids until every hash is found (or `limit`)."""
    found: dict[str, str] = {}
    for i in range(limit):
        raw = RAW_ID_FORMAT.format(i)
        hashed = hash_user_id(raw, secret)
        if hashed in hashes:
            found[hashed] = raw
            if len(found) == len(hashes):
                break
    return found


def build_pool(events: pd.DataFrame, size: int, unknown_share: float, secret: str, seed: int
               ) -> list[Request]:
    """`size` requests from the day's unlocks replayed a day later; some from never-seen users."""
    rng = np.random.default_rng(seed)
    rows = events.iloc[rng.choice(len(events), size, replace=size > len(events))].reset_index(drop=True)
    unknown = rng.random(size) < unknown_share
    pool = []
    for i, row in enumerate(rows.itertuples(index=False)):
        when = (pd.Timestamp(row.timestamp) + pd.Timedelta(days=1)).floor("s")
        user = f"bench-new-{i:05d}" if unknown[i] else str(row.user_id)
        secs = row.secs_since_prev_unlock
        body = {
            "user_id": user, "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "context": {"location": str(row.location), "battery": int(row.battery),
                        "charging": as_bool(row.charging), "network": str(row.network),
                        "secs_since_prev_unlock": 1800.0 if pd.isna(secs) else round(float(secs), 1)},
            "k": 4,
        }
        pool.append(Request(body, hash_user_id(user, secret), not unknown[i], when))
    return pool


def data_set_events(spec: ModelSpec) -> pd.DataFrame:
    """The data set's events with raw ids and UTC times, as the use case's loader reads them."""
    from feastflow.plugins import use_case_function
    from feastflow.settings import Settings

    assert spec.loader is not None
    load = use_case_function(spec, spec.loader.module, spec.loader.function)
    frame = load(Settings().data_dir)
    frame[spec.event_log.timestamp] = pd.to_datetime(frame[spec.event_log.timestamp], utc=True)
    return frame


def last_week_events(spec: ModelSpec) -> pd.DataFrame:
    """The data set's last EVENT_DAYS days with raw ids, as the use case's loader reads them."""
    frame = data_set_events(spec)
    stamps = frame[spec.event_log.timestamp]
    start = stamps.max().floor("D") - pd.Timedelta(days=EVENT_DAYS - 1)
    return frame[stamps >= start].reset_index(drop=True)


def logged_entities(home: Path, spec: ModelSpec, days: int) -> set[Any]:
    """The entities (as stored: hashed) of the home's event log over its last `days` days."""
    entity = spec.event_log.entity
    files = [f for day in event_days(home, spec.name)[-days:] for f in sorted(day.glob("hour=*/*.parquet"))]
    return set(pd.concat([pd.read_parquet(f, columns=[entity]) for f in files])[entity])


def unknown_entity(spec: ModelSpec, i: int) -> str | None:
    """An entity id the store has never seen, when the contract accepts one (a free string)."""
    column = spec.event_log.columns[spec.event_log.entity]
    free = column.type == "string" and column.pattern is None and column.allowed is None
    return f"bench-new-{i:05d}" if free else None


def build_event_pool(spec: ModelSpec, events: pd.DataFrame, size: int, unknown_share: float,
                     secret: str, seed: int, seen: set[Any]) -> list[Request]:
    """`size` requests from the events replayed EVENT_REPLAY_SHIFT later, each with its own
    entity and context; about `unknown_share` of them from never-seen entities (same context)."""
    from pipelines.demo import request_body

    log = spec.event_log
    rng = np.random.default_rng(seed)
    rows = events.iloc[rng.choice(len(events), size, replace=size > len(events))].reset_index(drop=True)
    unknown = rng.random(size) < unknown_share
    hashed = log.entity in log.hashed_columns
    pool = []
    for i, row in enumerate(rows.to_dict("records")):
        when = (pd.Timestamp(row[log.timestamp]) + EVENT_REPLAY_SHIFT).floor("s")
        new = unknown_entity(spec, i) if unknown[i] else None
        entity = row[log.entity] if new is None else new
        key = hash_user_id(str(entity), secret) if hashed else entity
        body = request_body(spec, entity, when, {name: row[name] for name in log.context})
        body["timestamp"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        pool.append(Request(body, key, key in seen, when))
    return pool


def build_entity_pool(spec: ModelSpec, events: pd.DataFrame, size: int, secret: str, seed: int
                      ) -> list[Request]:
    """`size` requests, every entity of the data set in turn (shuffled), each asking for its top k
    on the day EVENT_REPLAY_SHIFT after the data set's last event (times spread over that day)."""
    from pipelines.demo import request_body

    log = spec.event_log
    assert spec.retrieval is not None
    rng = np.random.default_rng(seed)
    entities = np.resize(rng.permutation(np.sort(events[log.entity].unique())), size)
    day = (events[log.timestamp].max() + EVENT_REPLAY_SHIFT).floor("D")
    hashed = log.entity in log.hashed_columns
    pool = []
    for entity, second in zip(entities.tolist(), rng.integers(0, 86_400, size).tolist(), strict=True):
        when = day + pd.Timedelta(seconds=second)
        body = request_body(spec, entity, when, {})
        body.update(timestamp=when.strftime("%Y-%m-%dT%H:%M:%SZ"), k=spec.retrieval.k)
        pool.append(Request(body, hash_user_id(str(entity), secret) if hashed else entity, True, when))
    return pool


def as_bool(value: Any) -> bool:
    """A raw file's boolean (CSV has strings)."""
    return str(value).strip().lower() in ("true", "1", "yes") if isinstance(value, str) else bool(value)


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def write_bodies(path: Path, bodies: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(bodies) + b"\n")
    return path


# --- Feast's feature server -------------------------------------------------------------------


def feast_rows(response: dict[str, Any]) -> list[dict[str, Any]]:
    """Feast's column-wise JSON answer as one dict per entity row (values and `<name>__ts`)."""
    names = response["metadata"]["feature_names"]
    results = response["results"]
    rows = [{} for _ in results[0]["values"]] if results else []
    for name, result in zip(names, results, strict=True):
        for row, value, stamp in zip(rows, result["values"], result["event_timestamps"], strict=True):
            row[name], row[name + "__ts"] = value, stamp
    return rows


def stage1_features(client: httpx.Client, spec: ModelSpec, keys: list[tuple[Any, ...]], batch: int = 256
                    ) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The entity service's features of each stage-1 key (user hash, hour), read from Feast's server."""
    names = list(spec.features.entity_join_keys)
    out = {}
    for start in range(0, len(keys), batch):
        chunk = keys[start:start + batch]
        response = client.post(FEAST_PATH, json={
            "feature_service": spec.features.entity_service,
            "entities": {name: [key[j] for key in chunk] for j, name in enumerate(names)}})
        response.raise_for_status()
        out.update(zip(chunk, feast_rows(response.json()), strict=True))
    return out


def time_value(when: pd.Timestamp, name: str) -> int:
    """hour_of_day, is_weekend or unix_seconds of a UTC time (feastflow.ranking.time_values)."""
    if name == "hour_of_day":
        return when.hour
    if name == "is_weekend":
        return int(when.dayofweek >= 5)
    if name == "unix_seconds":
        return int(when.timestamp())
    raise ValueError(f"unknown time source {name!r}")


def source_value(source: str, unlock: Request, stage1: dict[str, Any] | None = None,
                 item: str | None = None) -> Any:
    """The value of a declared source (`entity`, `item`, `feature:x`, `context:x`, `time:x`)."""
    from feastflow.ranking import MISSING_KEY

    kind, _, name = source.partition(":")
    if kind == "entity":
        return unlock.user_hash
    if kind == "item":
        return item
    if kind == "feature":
        return (stage1 or {}).get(name) or MISSING_KEY
    if kind == "context":
        return unlock.body["context"][name]
    if kind == "time":
        return time_value(unlock.when, name)
    raise ValueError(f"unknown source kind in {source!r}")


def stage1_key(spec: ModelSpec, unlock: Request) -> tuple[Any, ...]:
    return tuple(source_value(s, unlock) for s in spec.features.entity_join_keys.values())


def one_entity_body(spec: ModelSpec, unlock: Request) -> dict[str, Any]:
    """The stage-1 request: the entity service for one user and hour."""
    return {"feature_service": spec.features.entity_service,
            "entities": {k: [v] for k, v in zip(spec.features.entity_join_keys, stage1_key(spec, unlock),
                                                strict=True)}}


def ranker_body(spec: ModelSpec, unlock: Request, stage1: dict[str, Any]) -> dict[str, Any]:
    """The stage-2 request one prediction makes: a row per candidate, keys as the spec declares."""
    from feastflow.ranking import generate_candidates

    lists = [stage1.get(name) for name in spec.candidates.lists]
    limits = list(spec.candidates.lists.values())
    items, _ = generate_candidates(lists, limits, spec.candidates.max_candidates)
    return candidate_rows_body(spec, unlock, items, stage1)


def candidate_rows_body(spec: ModelSpec, request: Request, items: list[Any],
                        stage1: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ranking service's read for these candidates: a row per item, join keys and request
    fields as the spec declares them."""
    sources = {**spec.features.join_keys, **spec.features.request_fields}
    return {"feature_service": spec.features.ranking_service,
            "entities": {key: [source_value(source, request, stage1, item) for item in items]
                         for key, source in sources.items()}}


def retrieved_items(spec: ModelSpec, home: Path, redis_url: str, pool: list[Request]
                    ) -> dict[Any, list[Any]]:
    """Each entity's candidate items as our server's stage 1 retrieves them: the champion's
    artifacts (loaded as the server loads them), the history and popularity read online."""
    from feastflow.online import open_reader
    from feastflow.scoring import FeaturePlan, ScoreRequest
    from feastflow.settings import Settings
    from feastflow.store import open_store
    from registry.lifecycle import Registry
    from serving.models import ModelHolder

    settings = Settings(home=home, profile="redis", redis_url=redis_url)
    store = open_store(settings, spec.name)
    with tempfile.TemporaryDirectory() as models:
        holder = ModelHolder(spec, FeaturePlan.from_store(store, spec), {"champion": "champion"},
                             Path(models), Registry(settings.tracking_uri, settings.artifacts_uri))
        holder.load_initial()
    champion = holder.get("champion")
    if champion is None:
        raise RuntimeError(f"no champion of {spec.registered_model_name} could be loaded")
    first = {r.user_hash: r for r in pool}
    requests = [ScoreRequest(key, int(r.when.timestamp()) * 1_000_000, {}) for key, r in first.items()]

    async def retrieve() -> list[list[Any]]:
        reader = open_reader(settings, store)
        try:
            await champion.retrieval.refresh_popularity(reader)
            return await champion.retrieval.candidates(requests, reader)
        finally:
            await reader.close()

    return dict(zip(first, asyncio.run(retrieve()), strict=True))


def event_body(spec: ModelSpec, request: Request) -> dict[str, Any]:
    """A per-event request's read: the spec's service for one row, keys and request fields as
    the spec declares them."""
    sources = {**spec.features.join_keys, **spec.features.request_fields}
    return {"feature_service": spec.features.service,
            "entities": {key: [source_value(source, request)] for key, source in sources.items()}}


def event_rows(client: httpx.Client, spec: ModelSpec, pool: list[Request], batch: int = 256
               ) -> list[dict[str, Any]]:
    """Each request's row of the spec's service (values and `<name>__ts`), read from Feast's server."""
    sources = {**spec.features.join_keys, **spec.features.request_fields}
    rows: list[dict[str, Any]] = []
    for start in range(0, len(pool), batch):
        chunk = pool[start:start + batch]
        response = client.post(FEAST_PATH, json={
            "feature_service": spec.features.service,
            "entities": {key: [source_value(source, r) for r in chunk] for key, source in sources.items()}})
        response.raise_for_status()
        rows += feast_rows(response.json())
    return rows


def check_feast_answers(client: httpx.Client, bodies: list[bytes], keys: set[str]) -> dict[str, Any]:
    """Send a sample of the bodies once: every answer 200, and the share of null feature values."""
    values = nulls = 0
    for body in bodies:
        response = client.post(FEAST_PATH, content=body, headers={"Content-Type": "application/json"})
        if response.status_code != 200:
            raise RuntimeError(f"feast serve answered {response.status_code}: {response.text[:500]}")
        for row in feast_rows(response.json()):
            for name, value in row.items():
                if name not in keys and not name.endswith("__ts"):
                    values, nulls = values + 1, nulls + (value is None)
    if values == 0 or nulls == values:
        raise RuntimeError("feast serve answered without any feature value")
    return {"responses": len(bodies), "null_value_share": round(nulls / values, 4)}


def check_fresh(spec: ModelSpec, home: Path, redis_url: str, snapshot: pd.Timestamp,
                known: list[Request]) -> None:
    """Fail unless every request falls within the TTL of the newest candidate-list snapshot online.

    Feast serves values of any age, while our server treats values older than their view's TTL
    as missing (as the point-in-time join does): stale daily features would leave it only the
    real-time candidates to read and score, a far cheaper request than a real one.
    """
    from feastflow.online import view_layouts
    from feastflow.settings import Settings
    from feastflow.store import open_store

    settings = Settings(home=home, profile="redis", redis_url=redis_url)
    name = spec.candidates.fallback_list
    layouts = view_layouts(open_store(settings, spec.name)).values()
    ttl = min(layout.ttl_seconds or float("inf") for layout in layouts if name in layout.features)
    last = max(u.when for u in known)
    age = last - (snapshot.tz_convert("UTC") if snapshot.tzinfo else snapshot.tz_localize("UTC"))
    if age.total_seconds() > ttl:
        raise RuntimeError(f"the newest {name} snapshot online is {snapshot}, but requests run until "
                           f"{last}: {age} later, beyond the view's TTL of {ttl / 3600:g} h; put the "
                           f"last days online (feastflow features && feastflow materialize)")
    log(f"online snapshot {snapshot} is fresh for every request (newest {last}, TTL {ttl / 3600:g} h)")


def check_event_fresh(spec: ModelSpec, home: Path, redis_url: str, pool: list[Request],
                      rows: list[dict[str, Any]]) -> None:
    """Fail unless every request comes after the rows online it reads, and within the views' TTL
    of the newest of them.

    A row stamped after its request would score the payment with what happened after it (the
    server keeps such values: a client's clock may lag); rows older than their view's TTL are
    missing to our server, not to Feast (see check_fresh).
    """
    from feastflow.scoring import FeaturePlan
    from feastflow.settings import Settings
    from feastflow.store import open_store

    settings = Settings(home=home, profile="redis", redis_url=redis_url)
    views = FeaturePlan.from_store(open_store(settings, spec.name), spec).stage2
    stored = {f"{name}__ts" for view in views for name in view.features}
    newest: list[pd.Timestamp | None] = []
    for row in rows:
        stamps = [pd.Timestamp(v) for k, v in row.items() if k in stored and v and not v.startswith("1970")]
        newest.append(max(stamps) if stamps else None)
    ahead = [(r.when, n) for r, n in zip(pool, newest, strict=True) if n is not None and n > r.when]
    if ahead:
        raise RuntimeError(f"{len(ahead)} of {len(pool)} requests read rows stamped after them "
                           f"(e.g. a request at {ahead[0][0]} reads a row of {ahead[0][1]}): "
                           "replay them later")
    found = [n for n in newest if n is not None]
    if not found:
        raise RuntimeError("feast serve found no row online for any request: materialize first")
    snapshot, last = max(found), max(r.when for r in pool)
    ttl = min(view.ttl_seconds or float("inf") for view in views)
    if (last - snapshot).total_seconds() > ttl:
        raise RuntimeError(f"the newest row online is of {snapshot}, but requests run until {last}: "
                           f"beyond the views' TTL of {ttl / 3600:g} h")
    # the entity's own rows: found for the known, never for the unknown
    entity = spec.event_log.entity
    own = [f"{name}__ts" for view in views if entity in view.join_keys for name in view.features]
    has_own = [any(row.get(k) and not row[k].startswith("1970") for k in own) for row in rows]
    known = Counter(r.known for r, found in zip(pool, has_own, strict=True) if found)
    if own and known[True] == 0:
        raise RuntimeError(f"no known {entity} has a row online: materialize, or was the home built "
                           "with another FEASTFLOW_USER_HASH_SECRET?")
    log(f"rows online are older than every request (newest {snapshot}, requests "
        f"{min(r.when for r in pool)} .. {last}, TTL {ttl / 86400:g} days); {entity} rows found for "
        f"{known[True]} of {sum(r.known for r in pool)} known and {known[False]} of "
        f"{sum(not r.known for r in pool)} unknown")


# --- load -------------------------------------------------------------------------------------


@dataclass
class Workload:
    """Pre-built bodies for one endpoint, and the string every good answer contains."""

    name: str
    port: int
    path: str
    bodies: list[bytes]
    must_contain: str
    headers: dict[str, str] = field(default_factory=dict)
    known: list[bool] | None = None  # per body: a known user? (the server's own known_user is false
    #                                  whenever a fallback answers, so the answer cannot tell)

    @property
    def ours(self) -> bool:
        """Our predict endpoint (its answers name fallbacks), not Feast's."""
        return self.path != FEAST_PATH

    def raw_requests(self) -> list[bytes]:
        """Whole HTTP/1.1 requests, serialized once."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        return [(f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(b)}\r\n{extra}\r\n").encode() + b
                for b in self.bodies]


def summarize(requests: int, ok: int, seconds: float, latencies_ms: list[float] | np.ndarray,
              **errors: int) -> dict[str, Any]:
    lat = np.asarray(latencies_ms, dtype=float)
    return {
        "rps": round(ok / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        "errors": int(sum(errors.values())),
        "requests": requests,
        **{k: int(v) for k, v in errors.items()},
    }


def run_wrk(work: Workload, folder: Path, connections: int, threads: int, seconds: float
            ) -> dict[str, Any]:
    """One wrk run; the Lua script's done() prints the counts and percentiles."""
    bodies = write_bodies(folder / f"{work.name}.bodies", work.bodies)
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
           "--timeout", f"{REQUEST_TIMEOUT_S:.0f}s", "-s", str(LUA), f"http://127.0.0.1:{work.port}", "--",
           str(bodies), work.path, work.must_contain, *(f"{k}: {v}" for k, v in work.headers.items())]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr[-1000:]} {out.stdout[-1000:]}")
    w = json.loads(lines[-1].removeprefix("BENCH_JSON "))
    e = w["errors"]
    socket_errors = e["connect"] + e["read"] + e["write"]
    result = summarize(w["requests"], w["ok_bodies"], w["duration_us"] / 1e6, [],
                       non_2xx=e["status"], socket_errors=socket_errors, timeouts=e["timeout"],
                       bad_bodies=w["bad_bodies"])
    lat = w["latency_us"]
    result.update(p50_ms=round(lat["p50"] / 1000, 2), p99_ms=round(lat["p99"] / 1000, 2),
                  p999_ms=round(lat["p999"] / 1000, 2))
    if work.ours:
        seconds = w["duration_us"] / 1e6
        with_fallbacks(result, w["fallback"], None, w["ok_bodies"], seconds)
    return result


def with_fallbacks(result: dict[str, Any], fallback: int, fallback_known: int | None, ok: int, seconds: float
                   ) -> dict[str, Any]:
    """Good answers that came from a fallback (unknown users always get one; known users when the
    server sheds load or a dependency fails; wrk cannot tell which) and the rate of the others."""
    result.update(fallback=fallback, fallback_share=round(fallback / ok, 4) if ok else None,
                  full_model_rps=round((ok - fallback) / seconds, 1) if seconds > 0 else 0.0)
    if fallback_known is not None:
        result["fallback_known_users"] = fallback_known
    return result


class Connection:
    """One keep-alive HTTP/1.1 connection that sends whole pre-serialized requests."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        """Open the connection unless it is open."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def roundtrip(self, raw: bytes) -> tuple[int, bytes]:
        """Send, read the answer (Content-Length or chunked); reconnect first if needed."""
        await self.connect()
        assert self.reader is not None
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                self.writer.write(raw)
                head = await self.reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length, chunked, close = None, False, False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name, value = name.strip().lower(), value.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"transfer-encoding":
                        chunked = b"chunked" in value
                    elif name == b"connection":
                        close = value == b"close"
                if chunked:
                    body = await self._chunked()
                elif length is not None:
                    body = await self.reader.readexactly(length)
                else:
                    body, close = await self.reader.read(), True
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        return status, body

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(data[:-2])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


FALLBACK, FALLBACK_NULL = re.compile(rb'"fallback"\s*:'), re.compile(rb'"fallback"\s*:\s*null')


def is_fallback(body: bytes) -> bool:
    """The answer names a fallback (`fallback` present and not null)."""
    return FALLBACK.search(body) is not None and FALLBACK_NULL.search(body) is None


OnAnswer = Callable[[int, float, int, bytes], None]  # request index, seconds since start, status, body


async def closed_loop(work: Workload, connections: int, seconds: float, on_answer: OnAnswer | None = None,
                      stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Each connection sends the next body as soon as its previous answer arrived, for `seconds`
    (or, given `stop`, until it is set)."""
    raw = work.raw_requests()
    must = work.must_contain.encode()
    latencies: list[float] = []
    counts: Counter[str] = Counter()
    start = time.perf_counter()
    end = start + seconds

    async def client(c: int) -> None:
        conn = Connection(work.port)
        i = c * 7919
        while not stop.is_set() if stop is not None else time.perf_counter() < end:
            index = i % len(raw)
            i += 1
            sent = time.perf_counter()
            try:
                status, body = await conn.roundtrip(raw[index])
            except TimeoutError:
                counts["timeouts"] += 1
                continue
            except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                counts["socket_errors"] += 1
                await asyncio.sleep(0.01)  # the server may be gone: do not spin
                continue
            done = time.perf_counter()
            counts["requests"] += 1
            if on_answer is not None:
                on_answer(index, done - start, status, body)
            tally(counts, latencies, status, body, must, (done - sent) * 1000,
                  bool(work.known and work.known[index]))
        conn.close()

    await asyncio.gather(*(client(c) for c in range(connections)))
    elapsed = time.perf_counter() - start
    result = summarize(counts["requests"] + counts["socket_errors"] + counts["timeouts"], counts["ok"],
                       elapsed, latencies, non_2xx=counts["non_2xx"],
                       socket_errors=counts["socket_errors"], timeouts=counts["timeouts"],
                       bad_bodies=counts["bad_bodies"])
    if work.ours:
        with_fallbacks(result, counts["fallback"], counts["fallback_known"] if work.known else None,
                       counts["ok"], elapsed)
    return result


def tally(counts: Counter[str], latencies: list[float], status: int, body: bytes, must: bytes,
          latency_ms: float, known: bool) -> None:
    """Count one answer: non-2xx, a body without values, or good (with its latency, fallback or not)."""
    if not 200 <= status < 300:
        counts["non_2xx"] += 1
    elif must not in body:
        counts["bad_bodies"] += 1
    else:
        counts["ok"] += 1
        latencies.append(latency_ms)
        if is_fallback(body):
            counts["fallback"] += 1
            counts["fallback_known"] += known


async def open_loop(work: Workload, rate: float, seconds: float, connections: int) -> dict[str, Any]:
    """`rate` requests/s on a fixed schedule; latency from each request's scheduled send time.

    Times come from time.perf_counter: uvloop's loop.time() is libuv's cached millisecond clock
    (it quantized every latency to whole milliseconds and lagged by up to a loop iteration).
    """
    raw = work.raw_requests()
    must = work.must_contain.encode()
    total = int(rate * seconds)
    queue: asyncio.Queue[tuple[int, float, bool] | None] = asyncio.Queue()
    latencies: list[float] = []
    lateness: list[float] = []  # ms from due to send, of requests that had a connection waiting
    idle = 0  # clients waiting in queue.get()
    counts: Counter[str] = Counter()
    # Connections open (each with one unmeasured request) before the schedule starts: a
    # keep-alive client's connect is not a request's latency (it put ~50 answers of 10,000,
    # half the p99's budget, over 10 ms at the start of every run).
    pool = [Connection(work.port) for _ in range(connections)]
    await asyncio.gather(*(conn.roundtrip(raw[i % len(raw)]) for i, conn in enumerate(pool)),
                         return_exceptions=True)  # a failed one reconnects on its first request
    start = time.perf_counter() + 0.1
    last_done = start

    async def schedule() -> None:
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            # Put while every waiting client already has an item: it waits for a connection, a
            # wait the server's pace makes, not the generator's lateness.
            waited = queue.qsize() >= idle
            counts["queued"] += waited
            queue.put_nowait((i, due, waited))
        for _ in range(connections):
            queue.put_nowait(None)

    async def client(conn: Connection) -> None:
        nonlocal last_done, idle
        while True:
            idle += 1
            item = await queue.get()
            idle -= 1
            if item is None:
                break
            i, due, waited = item
            if not waited:
                lateness.append((time.perf_counter() - due) * 1000)
            try:
                status, body = await conn.roundtrip(raw[i % len(raw)])
            except TimeoutError:
                counts["timeouts"] += 1
                continue
            except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                counts["socket_errors"] += 1
                continue
            last_done = time.perf_counter()
            tally(counts, latencies, status, body, must, (last_done - due) * 1000,
                  bool(work.known and work.known[i % len(raw)]))
        conn.close()

    tasks = [asyncio.create_task(schedule()), *(asyncio.create_task(client(conn)) for conn in pool)]
    _, pending = await asyncio.wait(tasks, timeout=seconds + 0.1 + OPEN_LOOP_DRAIN_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    answered = sum(counts[k] for k in ("ok", "non_2xx", "bad_bodies", "socket_errors", "timeouts"))
    result = summarize(total, counts["ok"], max(last_done - start, seconds), latencies,
                       non_2xx=counts["non_2xx"], socket_errors=counts["socket_errors"],
                       timeouts=counts["timeouts"], bad_bodies=counts["bad_bodies"],
                       unfinished=total - answered)
    result.update(target_rps=rate, connections=connections)
    seconds_run = max(last_done - start, seconds)
    with_fallbacks(result, counts["fallback"], counts["fallback_known"] if work.known else None,
                   counts["ok"], seconds_run)
    lat = np.asarray(latencies, dtype=float)
    late = np.asarray(lateness, dtype=float)
    return open_loop_extras(result, "python",
                            float(np.percentile(lat, 99.9)) if lat.size else None,
                            float(lat.max()) if lat.size else None,
                            float(np.percentile(late, 99)) if late.size else None,
                            float(late.max()) if late.size else None, counts["queued"])


def open_loop_extras(result: dict[str, Any], generator: str, p999_ms: float | None, max_ms: float | None,
                     lateness_p99_ms: float | None, lateness_max_ms: float | None, queued: int
                     ) -> dict[str, Any]:
    """The open loop's own keys: the tail, and how late the generator sent (its health: a late
    send counts as the server's latency). `queued` requests waited for a free connection."""
    def ms(value: float | None, digits: int) -> float | None:
        return round(value, digits) if value is not None else None

    result.update(generator=generator, p999_ms=ms(p999_ms, 2), max_ms=ms(max_ms, 2),
                  send_lateness_p99_ms=ms(lateness_p99_ms, 3), send_lateness_max_ms=ms(lateness_max_ms, 3),
                  queued=int(queued))
    return result


def build_open_loop(folder: Path) -> Path | None:
    """bench/open_loop.c compiled into `folder`; None without gcc or when it does not build."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    binary = folder / "open_loop"
    out = subprocess.run([gcc, "-O2", "-Wall", "-Wextra", "-o", str(binary), str(OPEN_LOOP_C)],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        log(f"gcc could not build {OPEN_LOOP_C.name} (the asyncio open loop runs): {out.stderr[-1000:]}")
        return None
    return binary


def write_requests(path: Path, work: Workload) -> Path:
    """open_loop.c's input: `<u32 little-endian length><u8 known><raw HTTP request>` per body."""
    with path.open("wb") as f:
        for i, raw in enumerate(work.raw_requests()):
            f.write(struct.pack("<IB", len(raw), bool(work.known and work.known[i])) + raw)
    return path


def open_loop_c(binary: Path, work: Workload, folder: Path, rate: float, seconds: float, connections: int
                ) -> dict[str, Any]:
    """open_loop's run, by bench/open_loop.c: the same schedule, warm-up, counts and keys."""
    requests = write_requests(folder / f"{work.name}.requests", work)
    cmd = [str(binary), "-t", repr(REQUEST_TIMEOUT_S), str(work.port), repr(float(rate)),
           repr(float(seconds)), str(connections), str(requests), repr(OPEN_LOOP_DRAIN_S), work.must_contain]
    # its own deadlines end it: warm-up (at most the timeout), the schedule, the drain
    out = subprocess.run(cmd, capture_output=True, text=True,
                         timeout=REQUEST_TIMEOUT_S + seconds + OPEN_LOOP_DRAIN_S + 60)
    lines = out.stdout.splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"open_loop failed ({out.returncode}): {out.stderr[-1000:]} {out.stdout[-1000:]}")
    c = json.loads(lines[-1])
    result = summarize(c["requests"], c["ok"], c["seconds"], [], non_2xx=c["non_2xx"],
                       socket_errors=c["socket_errors"], timeouts=c["timeouts"], bad_bodies=c["bad_bodies"],
                       unfinished=c["unfinished"])
    result.update(p50_ms=round(c["p50_ms"], 2) if c["p50_ms"] is not None else None,
                  p99_ms=round(c["p99_ms"], 2) if c["p99_ms"] is not None else None,
                  target_rps=rate, connections=connections)
    with_fallbacks(result, c["fallback"], c["fallback_known"] if work.known else None, c["ok"], c["seconds"])
    open_loop_extras(result, "c", c["p999_ms"], c["max_ms"], c["send_lateness_p99_ms"],
                     c["send_lateness_max_ms"], c["queued"])
    result["realtime"] = c["realtime"]  # SCHED_FIFO: its wake-ups did not wait for a busy core
    if c["warmup_errors"]:
        log(f"open loop: {c['warmup_errors']} of {connections} warm-up requests failed")
    return result


def run_open_loop(work: Workload, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The open-loop run: by open_loop.c unless --tool python or no gcc, else the asyncio one."""
    binary = build_open_loop(folder) if args.tool != "python" else None
    log(f"{work.name}: open loop, {args.rate:g} requests/s for {args.duration:g} s over "
        f"{args.open_loop_connections} connections, {'C' if binary else 'asyncio'} generator")
    if binary is not None:
        return open_loop_c(binary, work, folder, args.rate, args.duration, args.open_loop_connections)
    return run_async(open_loop(work, args.rate, args.duration, args.open_loop_connections))


def run_async(coro: Any) -> Any:
    """Run a coroutine on uvloop when it is installed (a faster client leaves more CPU to servers).

    The collector is off while it runs: the generator's own full collections over the request
    pool and frames took 60-135 ms each (gc.callbacks) and were counted as server latency.
    """
    gc.collect()
    gc.disable()
    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(coro)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    finally:
        gc.enable()


def measure(work: Workload, tool: str, folder: Path, args: argparse.Namespace,
            after_warmup: Callable[[], None] | None = None) -> dict[str, Any]:
    """A warm-up run (discarded), then the measured run, with the same tool and concurrency."""
    def one(seconds: float) -> dict[str, Any]:
        if tool == "wrk":
            return run_wrk(work, folder, args.connections, args.threads, seconds)
        return run_async(closed_loop(work, args.connections, seconds))

    if args.warmup > 0:
        log(f"{work.name}: warm-up {args.warmup:g} s")
        one(args.warmup)
    if after_warmup is not None:
        after_warmup()
    log(f"{work.name}: measured run {args.duration:g} s, {tool}, {args.connections} connections")
    load = os.getloadavg()[0]  # other work on the machine skews a side: say how busy it was
    result = one(args.duration)
    result["loadavg_1m_before"] = round(load, 2)
    log(f"{work.name}: {json.dumps(result)}")
    return result


# --- our server -------------------------------------------------------------------------------


def wait_ours_ready(process: Process, base: str, timeout_s: float = 180.0) -> str:
    """Ready when GET /readyz is 200; a server without /readyz when /healthz names a model."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not process.running():
            raise RuntimeError(f"feastflow serve exited:\n{process.tail()}")
        with contextlib.suppress(httpx.HTTPError, ValueError):
            ready = httpx.get(f"{base}/readyz", timeout=2)
            if ready.status_code == 200:
                return "/readyz"
            healthz = httpx.get(f"{base}/healthz", timeout=2) if ready.status_code == 404 else None
            if healthz is not None and healthz.json().get("model_version"):
                return "/healthz"
        if time.monotonic() > deadline:
            raise TimeoutError(f"feastflow serve was not ready within {timeout_s:.0f} s:\n{process.tail()}")
        time.sleep(0.25)


def predict_path(spec: ModelSpec) -> str:
    """Our endpoint: /v1/predict for the flagship (as ever: --server-root may be an older tree),
    /v1/<use case>/predict for the others."""
    return PREDICT_PATH if spec.name == DEFAULT_USE_CASE else f"/v1/{spec.name}/predict"


def answer_marker(spec: ModelSpec) -> str:
    """A string every good answer of ours contains: an item, a decision, a prediction."""
    if spec.task == "ranking":
        return f'"{spec.event_log.item}"'
    return '"decision":"' if spec.task == "binary_classification" else '"prediction":'


def answered(spec: ModelSpec, answer: dict[str, Any]) -> bool:
    """The answer has what the task predicts: items, or a score / prediction."""
    if spec.task == "ranking":
        return bool(answer.get(spec.serving.items_key or f"{spec.event_log.item}s"))
    return answer.get("score" if spec.task == "binary_classification" else "prediction") is not None


def check_ours(base: str, spec: ModelSpec, pool: list[Request], api_key: str, n: int = 40) -> None:
    """A few answers by hand: 200, what the task predicts, and who got a fallback."""
    fallbacks: Counter[str] = Counter()
    path = predict_path(spec)
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S, headers={"X-API-Key": api_key}) as client:
        for request in pool[:n]:
            response = client.post(path, json=request.body)
            if response.status_code != 200:
                raise RuntimeError(f"POST {path} answered {response.status_code}: {response.text[:500]}")
            answer = response.json()
            if not answered(spec, answer):
                hint = ("; scoring past the server's latency budget falls back: see "
                        "--latency-budget-ms" if answer.get("fallback") else "")
                raise RuntimeError(f"POST {path} answered without a prediction: {answer}{hint}")
            fallbacks[f"{'known' if request.known else 'unknown'}:{answer.get('fallback')}"] += 1
    log(f"our server answers {n} checks: {dict(fallbacks)} (model v{answer.get('model_version')})")


CACHE_METRIC = "feastflow_cache_requests_total"


def cache_counts(base: str) -> dict[tuple[str, str], float] | None:
    """feastflow_cache_requests_total by (level, result) from /metrics; None without the metric."""
    try:
        response = httpx.get(f"{base}/metrics", timeout=5)
    except httpx.HTTPError:
        return None
    return parse_cache_counts(response.text) if response.status_code == 200 else None


def parse_cache_counts(text: str) -> dict[tuple[str, str], float] | None:
    """The cache counter's samples in Prometheus' text format, summed by (level, result)."""
    counts: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith(CACHE_METRIC + "{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line[line.index("{"):line.rindex("}")]))
        value = float(line[line.rindex("}") + 1:].split()[0])
        level = labels.get("level") or labels.get("cache") or "?"
        result = labels.get("result") or labels.get("outcome") or labels.get("status") or "?"
        counts[(level, result)] = counts.get((level, result), 0.0) + value
    return counts or None


def cache_hit_rate(before: dict | None, after: dict | None) -> dict[str, Any]:
    """Hits / lookups per cache level over the measured run (the counters' difference)."""
    if after is None:
        return {}
    before = before or {}
    out: dict[str, Any] = {}
    for level in sorted({lv for lv, _ in after}):
        delta = {r: after[(lv, r)] - before.get((lv, r), 0.0) for lv, r in after if lv == level}
        lookups = sum(delta.values())
        hits = sum(v for r, v in delta.items() if r.lower() in ("hit", "hits"))
        out[level] = {"hit_rate": round(hits / lookups, 4) if lookups else None, "hits": int(hits),
                      "lookups": int(lookups)}
    return out


# --- faults -----------------------------------------------------------------------------------


def register_champion_again(home: Path, model_name: str) -> None:
    """Child of the fault run: import MLflow, print `ready`, and on a line from stdin register the
    champion's model source as a new version, move `champion` to it and print what moved as JSON.
    (Importing MLflow takes seconds: done before the load starts, not at the moment of the fault.)"""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    client.get_registered_model(model_name)  # connect to the registry now
    print("ready", flush=True)
    sys.stdin.readline()
    current = client.get_model_version_by_alias(model_name, "champion")
    new = mlflow.register_model(current.source, model_name)
    tags = {k: v for k, v in current.tags.items() if not k.startswith(("lifecycle.", "previous_champion"))}
    for key, value in {**tags, "previous_champion": str(current.version),
                       "bench.registered_again_from": str(current.version)}.items():
        client.set_model_version_tag(model_name, new.version, key, value)
    client.set_registered_model_alias(model_name, "champion", new.version)
    print(json.dumps({"from": str(current.version), "to": str(new.version)}), flush=True)


async def read_line_starting(stream: asyncio.StreamReader, prefix: bytes) -> bytes:
    """The first line that starts with `prefix` (libraries may print first); b"" at end of stream."""
    while line := await stream.readline():
        if line.startswith(prefix):
            return line
    return b""


@dataclass
class FaultLog:
    """What the fault run saw: answers in arrival order and when each fault happened."""

    answers: list[tuple[float, int, str | None, str | None, bool]] = field(default_factory=list)
    events: dict[str, float] = field(default_factory=dict)
    reload: dict[str, Any] = field(default_factory=dict)


async def fault_run(work: Workload, pool: list[Request], redis: RedisServer, base: str, api_key: str,
                    home: Path, use_case: str, child_log: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Load ours while Redis goes away and comes back and the model is reloaded; see the module doc."""
    faults = FaultLog()
    start = time.perf_counter()  # set again when the load starts

    def on_answer(index: int, at: float, status: int, body: bytes) -> None:
        fallback = version = None
        if 200 <= status < 300:
            with contextlib.suppress(ValueError):
                answer = json.loads(body)
                fallback, version = answer.get("fallback"), answer.get("model_version")
        faults.answers.append((at, status, fallback, version, pool[index].known))

    async def at(second: float) -> None:
        await asyncio.sleep(max(0.0, start + second - time.perf_counter()))

    async def inject() -> None:
        await at(FAULT_STOP_S)
        log("faults: stopping Redis (shutdown save)")
        await asyncio.to_thread(redis.stop)
        faults.events["redis_down"] = time.perf_counter() - start
        await at(FAULT_RESTART_S)
        log("faults: restarting Redis")
        faults.events["redis_restart"] = time.perf_counter() - start
        await asyncio.to_thread(redis.start)
        faults.events["redis_ready"] = time.perf_counter() - start
        await at(FAULT_RELOAD_S)
        log("faults: champion registered again, alias moved, POST /admin/reload")
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        line = await asyncio.wait_for(read_line_starting(child.stdout, b"{"), 120)
        try:
            faults.reload["registered"] = json.loads(line)
        except ValueError:
            faults.reload["register_error"] = child_log.read_text(errors="replace")[-500:]
        faults.events["alias_moved"] = time.perf_counter() - start
        async with httpx.AsyncClient(timeout=60) as client:
            try:
                response = await client.post(f"{base}/admin/reload", headers={"X-API-Key": api_key})
                faults.reload["status"] = response.status_code
                faults.reload["answer"] = response.text[:300]
            except httpx.HTTPError as e:
                faults.reload["error"] = repr(e)
        faults.events["reload"] = time.perf_counter() - start

    async def control() -> None:
        try:
            await inject()
            await at(max(args.fault_duration, faults.events["reload"] + 5))  # see the reloaded model
        finally:
            stop.set()
            faults.events["load_end"] = time.perf_counter() - start

    with open(child_log, "ab") as err:
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--register-again", "--home", str(home), "--use-case", use_case,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err)
    try:
        assert child.stdout is not None
        ready = await asyncio.wait_for(read_line_starting(child.stdout, b"ready"), 180)
        if not ready:
            raise RuntimeError(f"the MLflow child failed:\n{child_log.read_text(errors='replace')[-1000:]}")
        stop = asyncio.Event()
        start = time.perf_counter()
        controller = asyncio.create_task(control())
        load = await closed_loop(work, args.connections, args.fault_duration, on_answer, stop=stop)
        await controller
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    return analyse_faults(faults, load)


def analyse_faults(faults: FaultLog, load: dict[str, Any]) -> dict[str, Any]:
    """Fallback share while Redis was down, recovery times after its restart, versions seen."""
    down, restart = faults.events.get("redis_down"), faults.events.get("redis_restart")
    known_ok = [(t, fb) for t, status, fb, _, known in faults.answers if known and 200 <= status < 300]
    during = [fb for t, fb in known_ok if down is not None and restart is not None and down <= t < restart]
    before = [fb for t, fb in known_ok if down is None or t < down]
    first = stable = None
    streak = 0
    if restart is not None:
        for t, status, fb, _, known in faults.answers:
            if t < restart or not known:
                continue
            streak = streak + 1 if (200 <= status < 300 and fb is None) else 0
            if streak == 1 and first is None:
                first = round(t - restart, 3)
            if streak == STABLE_RUN:
                stable = round(t - restart, 3)
                break
    versions: list[str] = []
    for _, _, _, version, _ in faults.answers:
        if version is not None and version not in versions:
            versions.append(version)
    non_2xx_down = sum(1 for t, status, *_ in faults.answers
                       if down is not None and restart is not None and down <= t < restart
                       and not 200 <= status < 300)

    def share(values: list[str | None]) -> float | None:
        return round(sum(v is not None for v in values) / len(values), 4) if values else None

    return {
        "errors_non_2xx": load["non_2xx"], "requests": load["requests"],
        "socket_errors": load["socket_errors"], "timeouts": load["timeouts"], "rps": load["rps"],
        "fallback_share_while_redis_down": share(during),
        "answers_while_redis_down": len(during),
        "fallbacks_while_redis_down": dict(Counter(str(v) for v in during if v is not None)),
        "non_2xx_while_redis_down": non_2xx_down,
        "fallback_share_before_fault": share(before),
        "fallbacks_before_fault": dict(Counter(str(v) for v in before if v is not None)),
        "recovery_seconds": {"first_non_fallback": first, f"run_of_{STABLE_RUN}_non_fallback": stable},
        "model_versions_seen": versions,
        "reload": faults.reload,
        "timeline_s": {k: round(v, 2) for k, v in faults.events.items()},
    }


# --- the run ----------------------------------------------------------------------------------


def run_feast(args: argparse.Namespace, spec: ModelSpec, home: Path, redis: RedisServer, work: Path,
              pool: list[Request], tool: str, stack: contextlib.ExitStack) -> dict[str, Any]:
    """Start `feast serve`, build its workloads from the pool (the task says which), measure each,
    stop it."""
    process, base = start_feast_serve(home, redis.url, work, spec.name, args.feast_max_requests)
    stack.callback(process.stop)
    build = (feast_event_workloads if spec.per_event else
             feast_retrieval_workloads if spec.retrieval is not None else feast_ranking_workloads)
    with httpx.Client(base_url=base, timeout=60) as client:
        workloads, must_contain = build(client, spec, home, redis, pool)
    results = {}
    port = int(base.rsplit(":", 1)[1])
    for name, (bodies, rows_per_request, checked) in workloads.items():
        results[name] = measure(Workload(name, port, FEAST_PATH, bodies, must_contain), tool, work, args)
        results[name]["sample_check"] = checked
        results[name]["rows_per_request"] = rows_per_request
    process.stop()
    return results


# name -> (bodies, entity rows per request, sample check); and the string every good answer has
FeastWorkloads = tuple[dict[str, tuple[list[bytes], float, dict[str, Any]]], str]


def feast_ranking_workloads(client: httpx.Client, spec: ModelSpec, home: Path, redis: RedisServer,
                            pool: list[Request]) -> FeastWorkloads:
    """A ranking's two reads, known users only: stage 2 (`feast_serve`) and stage 1
    (`feast_serve_one_entity`); the online daily snapshot checked fresh for every request."""
    known = [u for u in pool if u.known]
    keys = sorted({stage1_key(spec, u) for u in known})
    stage1 = stage1_features(client, spec, keys)
    log(f"feast serve: stage-1 features of {len(keys):,} (user, hour) pairs read")
    workloads = ranking_reads(client, spec, [ranker_body(spec, u, stage1[stage1_key(spec, u)])
                                             for u in known], known)
    # Every good answer carries the latest daily snapshot's timestamp: the values were found.
    stamps = Counter(row.get(spec.candidates.fallback_list + "__ts") for row in stage1.values())
    latest = max(s for s in stamps if s and not s.startswith("1970"))
    check_fresh(spec, home, redis.url, pd.Timestamp(latest), known)
    return workloads, f'"{latest}"'


def feast_retrieval_workloads(client: httpx.Client, spec: ModelSpec, home: Path, redis: RedisServer,
                              pool: list[Request]) -> FeastWorkloads:
    """A retrieval ranking's two reads: the ranking service for the entity and each candidate our
    stage 1 retrieves for it (`feast_serve`), and the entity service (`feast_serve_one_entity`);
    every row read checked older than its request."""
    items = retrieved_items(spec, home, redis.url, pool)
    log(f"our stage 1 retrieved the candidates of {len(items):,} {spec.event_log.entity}s")
    bodies = [candidate_rows_body(spec, r, items[r.user_hash]) for r in pool]
    workloads = ranking_reads(client, spec, bodies, pool)
    sample = pool[:50]  # the entity's rows, then its candidates' rows
    check_rows_before(client, [one_entity_body(spec, r) for r in sample] + bodies[:len(sample)], sample * 2)
    return workloads, '"PRESENT"'  # Feast's status of a value it found


def ranking_reads(client: httpx.Client, spec: ModelSpec, ranker: list[dict[str, Any]],
                  requests: list[Request]) -> dict[str, tuple[list[bytes], float, dict[str, Any]]]:
    """A ranking's two Feast workloads from its stage-2 bodies and its requests' stage-1 reads,
    each checked on a sample of answers."""
    rows = [len(b["entities"][next(iter(spec.features.join_keys))]) for b in ranker]
    bodies = [compact(b) for b in ranker]
    one = [compact(one_entity_body(spec, r)) for r in requests]
    log(f"feast_serve bodies: {len(bodies):,}, {np.mean(rows):.1f} candidate rows each "
        f"(min {min(rows)}, max {max(rows)}); feast_serve_one_entity bodies: {len(one):,}")
    join_keys = set(spec.features.join_keys) | set(spec.features.request_fields)
    checked = {"feast_serve": check_feast_answers(client, bodies[:100], join_keys),
               "feast_serve_one_entity": check_feast_answers(client, one[:100],
                                                             set(spec.features.entity_join_keys))}
    log(f"feast serve answers checked: {checked}")
    return {"feast_serve": (bodies, round(float(np.mean(rows)), 1), checked["feast_serve"]),
            "feast_serve_one_entity": (one, 1, checked["feast_serve_one_entity"])}


def check_rows_before(client: httpx.Client, bodies: list[dict[str, Any]], requests: list[Request]) -> None:
    """Fail if a row Feast answers for a body is stamped after its request (the server would
    score with the future), or if no row is found at all."""
    newest: list[pd.Timestamp] = []
    for body, request in zip(bodies, requests, strict=True):
        response = client.post(FEAST_PATH, json=body)
        response.raise_for_status()
        stamps = [pd.Timestamp(v) for row in feast_rows(response.json()) for k, v in row.items()
                  if k.endswith("__ts") and v and not v.startswith("1970")]
        if stamps and max(stamps) > request.when:
            raise RuntimeError(f"a request at {request.when} reads a row of {max(stamps)}: replay later")
        newest += [max(stamps)] if stamps else []
    if not newest:
        raise RuntimeError("feast serve found no row online for any request: materialize first")
    log(f"rows online are older than their requests (newest {max(newest)}, requests from "
        f"{min(r.when for r in requests)})")


def feast_event_workloads(client: httpx.Client, spec: ModelSpec, home: Path, redis: RedisServer,
                          pool: list[Request]) -> FeastWorkloads:
    """A per-event task's one read (`feast_serve`): the spec's service for the request's entity
    row, every request of the pool; each request's rows checked older than it."""
    bodies = [compact(event_body(spec, r)) for r in pool]
    check_event_fresh(spec, home, redis.url, pool, event_rows(client, spec, pool))
    keys = set(spec.features.join_keys) | set(spec.features.request_fields)
    checked = check_feast_answers(client, bodies[:100], keys)
    log(f"feast_serve bodies: {len(bodies):,}, one entity row each ({spec.features.service}); "
        f"answers checked: {checked}")
    # Feast's status of a value it found: a good answer has at least one.
    return {"feast_serve": (bodies, 1, checked)}, '"PRESENT"'


def run_ours(args: argparse.Namespace, spec: ModelSpec, home: Path, redis: RedisServer, work: Path,
             pool: list[Request], tool: str, stack: contextlib.ExitStack, workers: int = 1,
             extras: bool = True) -> dict[str, Any]:
    """Start `feastflow serve --workers N`, the headline run, then (extras) the open loop and the
    faults; stop it."""
    port = free_port()
    api_key = secrets.token_urlsafe(24)
    env = {**home_env(home, redis.url), "FEASTFLOW_PREDICTION_CACHE_TTL_SECONDS": "0",
           "FEASTFLOW_API_KEY": api_key, "FEASTFLOW_REQUEST_LOG_SAMPLE": "0.01"}
    if args.no_feature_cache:
        env["FEASTFLOW_FEATURE_CACHE_TTL_SECONDS"] = "0"
    if args.latency_budget_ms is not None:
        env["FEASTFLOW_LATENCY_BUDGET_MS"] = repr(args.latency_budget_ms)
    root = args.server_root.resolve() if args.server_root else PROJECT_ROOT
    if root != PROJECT_ROOT:  # another source tree (e.g. an older commit's): its packages first
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    cli = feastflow_cmd() if root == PROJECT_ROOT else [sys.executable, "-m", "pipelines.cli"]
    cmd = [*cli, "serve", "--port", str(port), "--use-case", args.use_case]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    process = Process("feastflow serve", cmd, work / f"feastflow_serve_{workers}.log", env=env,
                      cwd=root).start()
    stack.callback(process.stop)
    base = f"http://127.0.0.1:{port}"
    log(f"feastflow serve on {base} from {root}, {workers} worker(s)")
    probe = wait_ours_ready(process, base)
    log(f"feastflow serve is ready ({probe})")
    check_ours(base, spec, pool, api_key)
    work_ours = Workload("ours", port, predict_path(spec), [compact(u.body) for u in pool],
                         answer_marker(spec), {"X-API-Key": api_key}, [u.known for u in pool])
    results: dict[str, Any] = {}
    scraped: dict[str, Any] = {}
    results["ours"] = measure(work_ours, tool, work, args,
                              after_warmup=lambda: scraped.update(before=cache_counts(base)))
    results["cache_hit_rate"] = cache_hit_rate(scraped.get("before"), cache_counts(base))
    if args.rate > 0 and extras:
        results["open_loop"] = run_open_loop(work_ours, work, args)
        log(f"ours open loop: {json.dumps(results['open_loop'])}")
    if args.faults and extras:
        log(f"ours: fault run, {args.fault_duration:g} s")
        results["faults"] = run_async(fault_run(work_ours, pool, redis, base, api_key, home, args.use_case,
                                                work / "register_again.log", args))
        log(f"faults: {json.dumps(results['faults'])}")
    process.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, help="reuse this FEASTFLOW_HOME (built there if it is not)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, bodies)")
    parser.add_argument("--users", type=int, default=150, help="generated worlds: users of the demo")
    parser.add_argument("--days", type=int, default=56, help="generated worlds: days of the demo")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of each measured run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up before each run")
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop requests/s (0: skip)")
    parser.add_argument("--open-loop-connections", type=int, default=16)
    parser.add_argument("--faults", action="store_true", help="also the fault run against our server")
    parser.add_argument("--fault-duration", type=float, default=36.0)
    parser.add_argument("--pool", type=int, default=4000, help="different request bodies")
    parser.add_argument("--unknown-share", type=float, default=0.05)
    parser.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto",
                        help="auto: wrk when installed; the open loop runs bench/open_loop.c (gcc) "
                             "unless python")
    parser.add_argument("--feast-max-requests", type=int, default=0,
                        help="feast serve --max-requests (its default, 1000, recycles the worker)")
    parser.add_argument("--skip-feast", action="store_true", help="measure our server only")
    parser.add_argument("--no-feature-cache", action="store_true",
                        help="also disable our feature cache: FEASTFLOW_FEATURE_CACHE_TTL_SECONDS=0")
    parser.add_argument("--latency-budget-ms", type=float,
                        help="our server's FEASTFLOW_LATENCY_BUDGET_MS (default: its own setting)")
    parser.add_argument("--server-root", type=Path,
                        help="run `feastflow serve` from this source tree (default: this checkout)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--use-case", default="next_app", help="folder under feature_repo/")
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="measure our server with each of these worker counts (e.g. 1 2)")
    parser.add_argument("--register-again", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.register_again:
        model_name = load_spec(args.use_case, FEATURE_REPO).registered_model_name
        register_champion_again(args.home.resolve(), model_name)
        return
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    if min(args.workers) < 1:
        parser.error("--workers: every count must be at least 1")
    if args.faults and args.fault_duration <= FAULT_RELOAD_S + 2:
        parser.error(f"--fault-duration must exceed {FAULT_RELOAD_S + 2:g} s")
    tool = args.tool if args.tool != "auto" else ("wrk" if shutil.which("wrk") else "python")
    if tool == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed")
    for binary in ("redis-server", "redis-cli"):
        if not shutil.which(binary):
            parser.error(f"{binary} is not installed")

    def stop_on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGHUP, stop_on_signal)
    try:
        report = run(args, tool)
    except KeyboardInterrupt:
        log("interrupted: everything started was stopped")
        sys.exit(130)
    print(json.dumps(report))


def run(args: argparse.Namespace, tool: str) -> dict[str, Any]:
    """Everything between setup and cleanup; the ExitStack stops what was started, in reverse."""
    spec = load_spec(args.use_case, FEATURE_REPO)
    secret = os.environ.get("FEASTFLOW_USER_HASH_SECRET", DEV_HASH_SECRET)
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="bench_serving_"))
        stack.callback(remove_folder, work, args.keep)
        home = args.home.resolve() if args.home else work / "home"
        home.mkdir(parents=True, exist_ok=True)
        redis = RedisServer(free_port(), home / "bench_redis", work / "redis.log")
        stack.callback(redis.stop)
        redis.start()
        log(f"private redis-server on port {redis.port}, data in {redis.data_dir}")
        ensure_home(home, redis, spec, args.users, args.days)
        pool, source = request_pool(spec, home, args, secret)
        log(f"{len(pool):,} request bodies from {source}, "
            f"{sum(not u.known for u in pool)} from unknown {'users' if spec.generator else 'entities'}")
        feast = {} if args.skip_feast else run_feast(args, spec, home, redis, work, pool, tool, stack)
        by_workers = {n: run_ours(args, spec, home, redis, work, pool, tool, stack, workers=n,
                                  extras=i == 0) for i, n in enumerate(args.workers)}
        ours = by_workers[args.workers[0]]

    def ratio(a: dict[str, Any], b: dict[str, Any] | None) -> float | None:
        return round(a["rps"] / b["rps"], 2) if b and b.get("rps") else None

    report: dict[str, Any] = {
        "use_case": spec.name,
        "ours": ours["ours"],
        "feast_serve": feast.get("feast_serve"),
        "feast_serve_one_entity": feast.get("feast_serve_one_entity"),
        "rps_ratio": ratio(ours["ours"], feast.get("feast_serve")),
        "rps_ratio_one_entity": ratio(ours["ours"], feast.get("feast_serve_one_entity")),
        "cache_hit_rate": ours["cache_hit_rate"],
        "unknown_user_share": round(sum(not u.known for u in pool) / len(pool), 4),
        "feature_cache": not args.no_feature_cache,
        "connections": args.connections,
        "duration_s": args.duration,
        "latency_budget_ms": args.latency_budget_ms,  # null: the server's own setting
        "tool": tool,
    }
    if len(args.workers) > 1:
        report["workers"] = {str(n): {k: r["ours"][k] for k in ("rps", "p50_ms", "p99_ms", "errors")}
                             for n, r in by_workers.items()}
        report["rps_scaling"] = ratio(by_workers[args.workers[-1]]["ours"],
                                      by_workers[args.workers[0]]["ours"])
        report["cpu_count"] = os.cpu_count()
    if spec.per_event:  # one read per answer: Feast has no stage 1 to compare with
        del report["feast_serve_one_entity"], report["rps_ratio_one_entity"]
    if args.rate > 0:
        report[f"open_loop_{args.rate:g}"] = ours["open_loop"]
    if args.faults:
        report["faults"] = ours["faults"]
    return report


def remove_folder(folder: Path, keep: bool) -> None:
    if keep:
        log(f"kept {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
