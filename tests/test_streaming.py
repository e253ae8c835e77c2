"""Real-time features from the event stream, against a real Redis and real Feast push/materialize.

- skew: events streamed (out of order, with client retries) give, at every checkpoint, exactly the
  online values the offline point-in-time join returns over the event log the processor wrote;
- crash: `feastflow stream` killed with SIGKILL mid-stream and restarted applies every event once
  and logs it once;
- POST /v1/events: bad events are rejected with field and reason, valid ones still accepted.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
from conftest import REDIS_TEST_URL
from starlette.testclient import TestClient

from feastflow.event_log import read_events
from feastflow.privacy import hash_user_id
from feastflow.processor import RedisStateStore, StreamProcessor, build_processor
from feastflow.settings import Settings
from feastflow.spec import ModelSpec, load_spec
from feastflow.store import open_store
from feastflow.stream import open_event_stream
from feature_repo.next_app.world import generate_events
from pipelines.feast_ops import apply_repo, materialize
from pipelines.features import compute_feature_tables
from pipelines.ingest import ingest_frame
from serving.app import create_app
from serving.events import EventIntake
from serving.settings import ServingSettings

LAST_APP = ["user_last_app_fv:last_app", "user_last_app_fv:last_unlock_unix",
            "user_last_app_fv:recent_apps"]
RECENCY = ["user_app_recency_fv:last_opened_unix"]
SECRET = "stream-secret"
KEY = "events-key"


@dataclass(frozen=True)
class StreamWorld:
    """A home whose event log holds the first 70 % of a generated world; the rest is `live`."""

    settings: Settings
    spec: ModelSpec
    history: pd.DataFrame  # raw events already in the log
    live: pd.DataFrame  # raw events still to come through the stream, in time order


def make_world(root: Path, db: int, seed: int, users: int = 8, days: int = 4,
               redis_base: str | None = None) -> StreamWorld:
    """A world in db `db` of the test Redis (or of the server at `redis_base`, redis://host:port)."""
    url = (redis_base or REDIS_TEST_URL.rsplit("/", 1)[0]) + f"/{db}"
    redis.Redis.from_url(url).flushdb()
    settings = Settings(home=root / "var", profile="redis", redis_url=url, user_hash_secret=SECRET,
                        stream_log_flush_seconds=0.2, stream_block_ms=20)
    spec = load_spec("next_app", settings.feature_repo)
    raw = generate_events(users=users, days=days, seed=seed)
    cut = raw["timestamp"].quantile(0.7)
    history, live = raw[raw["timestamp"] < cut], raw[raw["timestamp"] >= cut]
    ingest_frame(history, spec.event_log, settings.events_dir(spec.name), SECRET)
    compute_feature_tables(settings, spec)
    apply_repo(settings, spec.name)
    materialize(settings, spec.name)
    return StreamWorld(settings, spec, history, live.reset_index(drop=True))


def as_payload(raw: pd.DataFrame) -> list[dict[str, Any]]:
    """Raw events as a client sends them: JSON values, ISO timestamps."""
    frame = raw.assign(timestamp=raw["timestamp"].map(lambda t: t.isoformat()))
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
            for row in frame.to_dict("records")]


def drain(processor: StreamProcessor) -> None:
    """Process until the stream is empty, then log and acknowledge."""
    while processor.step():
        pass
    processor.flush_log()


def logged_event_ids(settings: Settings) -> pd.Series:
    return read_events(settings.events_dir("next_app"), ["event_id"])["event_id"]


def online_values(settings: Settings, users: list[str], pairs: list[tuple[str, str]]
                  ) -> dict[str, list]:
    store = open_store(settings, "next_app")
    last = store.get_online_features(LAST_APP, [{"user_id": u} for u in users]).to_dict()
    recency = store.get_online_features(
        RECENCY, [{"user_id": u, "app": a} for u, a in pairs]).to_dict() if pairs else {
        "last_opened_unix": []}
    return {"last_app": last["last_app"], "last_unlock_unix": last["last_unlock_unix"],
            "recent_apps": [list(v) if v is not None else None for v in last["recent_apps"]],
            "last_opened_unix": recency["last_opened_unix"]}


def offline_values(settings: Settings, users: list[str], pairs: list[tuple[str, str]],
                   at: pd.Timestamp) -> dict[str, list]:
    """The offline point-in-time join (Feast's get_historical_features) at `at`."""
    store = open_store(settings, "next_app")
    last = store.get_historical_features(
        entity_df=pd.DataFrame({"user_id": users, "event_timestamp": at}), features=LAST_APP
    ).to_df().set_index("user_id").loc[users]
    recency = store.get_historical_features(
        entity_df=pd.DataFrame({"user_id": [u for u, _ in pairs], "app": [a for _, a in pairs],
                                "event_timestamp": at}), features=RECENCY,
    ).to_df().set_index(["user_id", "app"]).loc[pairs] if pairs else pd.DataFrame(
        {"last_opened_unix": []})

    def plain(values: pd.Series) -> list:
        return [None if v is None or (isinstance(v, float) and v != v) else
                (list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v)
                for v in values.astype(object)]

    def integers(values: pd.Series) -> list:
        return [None if v is None else int(v) for v in plain(values)]

    return {"last_app": plain(last["last_app"]),
            "last_unlock_unix": integers(last["last_unlock_unix"]),
            "recent_apps": plain(last["recent_apps"]),
            "last_opened_unix": integers(recency["last_opened_unix"])}


def time_chunks(live: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    """`n` consecutive pieces of the time-ordered events, cut where the timestamp changes."""
    ordered = live.sort_values(["timestamp", "event_id"], ignore_index=True)
    cuts = [len(ordered) * i // n for i in range(1, n)]
    ts = ordered["timestamp"]
    cuts = [c for c in cuts if ts.iloc[c] != ts.iloc[c - 1]]
    bounds = [0, *cuts, len(ordered)]
    return [ordered.iloc[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.fixture(scope="module")
def skew_world(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> StreamWorld:
    return make_world(tmp_path_factory.mktemp("skew"), db=13, seed=31)


def test_streamed_features_equal_the_offline_point_in_time_join(skew_world: StreamWorld) -> None:
    world, settings = skew_world, skew_world.settings
    intake = EventIntake(open_event_stream(settings, world.spec.name), SECRET, world.spec.event_log)
    processor = build_processor(settings, world.spec)
    assert processor.seed_from_log() == world.history["user_id"].nunique()
    raw_users = sorted(world.history["user_id"].unique())
    users = [hash_user_id(u, SECRET) for u in raw_users]
    live_pairs = {(hash_user_id(u, SECRET), a) for u, a in
                  zip(world.live["user_id"], world.live["app"], strict=True)}
    history_pairs = {(hash_user_id(u, SECRET), a) for u, a in
                     zip(world.history["user_id"], world.history["app"], strict=True)}
    pairs = sorted(live_pairs | set(sorted(history_pairs - live_pairs)[:40]))
    rnd = random.Random(7)
    checkpoints = []
    for chunk in time_chunks(world.live, 4):
        payload = as_payload(chunk)
        rnd.shuffle(payload)  # out of order within the chunk
        for i in range(0, len(payload), 100):
            result = intake.submit(payload[i:i + 100])
            assert (result.accepted, result.duplicates, result.rejected) == (
                len(payload[i:i + 100]), 0, [])
        retried = intake.submit(payload[:7])  # a client retrying: appended once
        assert (retried.accepted, retried.duplicates) == (0, 7)
        drain(processor)
        at = chunk["timestamp"].max() + pd.Timedelta(microseconds=1)
        checkpoints.append((at, online_values(settings, users, pairs)))

    # the processor appended every streamed event to the offline log, once
    ids = logged_event_ids(settings)
    assert not ids.duplicated().any()
    assert set(ids) == set(world.history["event_id"]) | set(world.live["event_id"])
    # training recomputes the real-time tables from that log with the same function ...
    compute_feature_tables(settings, world.spec)
    # ... and the offline point-in-time join equals what was online at every checkpoint
    for at, online in checkpoints:
        assert online == offline_values(settings, users, pairs, at), f"skew at {at}"
    assert processor.stats.applied == len(world.live)
    # the checkpoints saw the features move: they are not all the initial values
    assert len({tuple(c[1]["last_unlock_unix"]) for c in checkpoints}) == len(checkpoints)


def test_a_feature_computed_differently_online_is_caught_by_the_skew_check(
        skew_world: StreamWorld) -> None:
    # The check above can fail: one pushed value off by one second is visible as skew.
    settings = skew_world.settings
    user = hash_user_id(skew_world.history["user_id"].iloc[0], SECRET)
    at = skew_world.live["timestamp"].max() + pd.Timedelta(microseconds=1)
    truth = offline_values(settings, [user], [], at)
    store = open_store(settings, "next_app")
    fields = [f.name for f in store.get_feature_view("user_last_app_fv").features]
    row = store.get_online_features([f"user_last_app_fv:{f}" for f in fields],
                                    [{"user_id": user}]).to_df()
    now = pd.Timestamp.now(tz="UTC")
    wrong = row.assign(last_unlock_unix=row["last_unlock_unix"] + 1, event_timestamp=now,
                       created_timestamp=now)
    store.push("user_last_app_push", wrong)
    assert online_values(settings, [user], [])["last_unlock_unix"] != truth["last_unlock_unix"]


# --- crash and restart ---------------------------------------------------------------------


def _processor(settings: Settings, extra_env: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, **settings.as_env(), "FEASTFLOW_STREAM_BATCH_EVENTS": "20",
           "FEASTFLOW_STREAM_LOG_FLUSH_SECONDS": "0.3", "FEASTFLOW_STREAM_BLOCK_MS": "20",
           **extra_env}
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "stream", "--idle-exit", "4"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_processor_killed_mid_stream_applies_and_logs_every_event_once(
        tmp_path: Path, redis_url: str) -> None:
    world = make_world(tmp_path, db=12, seed=41)
    settings = world.settings
    stream = open_event_stream(settings, world.spec.name)
    intake = EventIntake(stream, SECRET, world.spec.event_log)
    payload = as_payload(world.live)
    for i in range(0, len(payload), 200):
        assert intake.submit(payload[i:i + 200]).accepted == len(payload[i:i + 200])
    client = redis.Redis.from_url(settings.redis_url)
    key = settings.event_stream_key(world.spec.name)

    def delivered() -> int:
        groups = client.xinfo_groups(key)
        return int(groups[0]["entries-read"] or 0) if groups else 0

    first = _processor(settings, {})
    second = None
    try:
        deadline = time.monotonic() + 120
        while delivered() < len(payload) // 2:
            assert first.poll() is None, first.communicate()[0]
            assert time.monotonic() < deadline, "the processor made no progress"
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert 0 < delivered() < len(payload)
        assert client.xpending(key, "feastflow-stream")["pending"] > 0  # read, never acknowledged

        second = _processor(settings, {})
        out, _ = second.communicate(timeout=180)
        assert second.returncode == 0, out
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()

    assert stream.backlog() == 0
    assert_each_event_applied_and_logged_once(world, client)


def assert_each_event_applied_and_logged_once(world: StreamWorld, client: redis.Redis) -> None:
    """Every event in the log once, counted once in its user's state, and the online features
    equal to the offline point-in-time values over the resulting log."""
    settings = world.settings
    ids = logged_event_ids(settings)
    assert not ids.duplicated().any(), ids[ids.duplicated()].tolist()[:5]
    assert set(ids) == set(world.history["event_id"]) | set(world.live["event_id"])
    # every user's state counted each of its events once (history seeded + streamed)
    users = sorted(world.history["user_id"].unique())
    hashed = [hash_user_id(u, SECRET) for u in users]
    states = RedisStateStore(client, world.spec.name).get(hashed)
    per_user = pd.concat([world.history, world.live])["user_id"].value_counts()
    assert [states[h].applied for h in hashed] == [int(per_user[u]) for u in users]
    # and the online features are the offline point-in-time values over the resulting log
    compute_feature_tables(settings, world.spec)
    pairs = sorted({(hash_user_id(u, SECRET), a) for u, a in
                    zip(world.live["user_id"], world.live["app"], strict=True)})
    at = world.live["timestamp"].max() + pd.Timedelta(microseconds=1)
    assert online_values(settings, hashed, pairs) == offline_values(settings, hashed, pairs, at)


# --- POST /v1/events ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def events_client(skew_world: StreamWorld) -> Iterator[TestClient]:
    serving = ServingSettings(**{**skew_world.settings.model_dump(), "api_key": KEY,
                                 "registry_poll_seconds": 0, "log_json": False})
    with TestClient(create_app(serving), raise_server_exceptions=False) as client:
        yield client


def good_event(event_id: str, **patch: Any) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": "api-user", "timestamp": "2026-03-02T08:05:00Z",
            "app": "mail", "secs_since_prev_unlock": 30.5, "session_seconds": 12.0,
            "location": "home", "battery": 80, "charging": False, "network": "wifi",
            "os_version": "android-14", **patch}


def post(client: TestClient, events: Any, key: str | None = KEY) -> Any:
    headers = {"x-api-key": key} if key else {}
    return client.post("/v1/events", json={"events": events} if events is not ... else None,
                       headers=headers)


def test_valid_events_are_accepted_with_202_and_reach_the_stream(
        events_client: TestClient, skew_world: StreamWorld) -> None:
    stream = open_event_stream(skew_world.settings, skew_world.spec.name)
    before = stream.backlog()
    response = post(events_client, [good_event("api-1"), good_event("api-2", app="maps")])
    assert response.status_code == 202
    assert response.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
    assert stream.backlog() == before + 2
    again = post(events_client, [good_event("api-1"), good_event("api-3")])
    assert again.status_code == 202
    assert again.json() == {"accepted": 1, "duplicates": 1, "rejected": []}


@pytest.mark.parametrize(("event", "field", "reason"), [
    (good_event("b1", battery=150), "battery", "out of range [0, 100]"),
    (good_event("b2", timestamp="yesterday-ish"), "timestamp", "ISO 8601 with a time zone required"),
    (good_event("b3", timestamp="2031-01-01T00:00:00Z"), "timestamp", "more than 5 minutes in the future"),
    (good_event("b4", location="moon"), "location", "must be one of home, work, commute, other"),
    (good_event("b5", app="Not An App!"), "app", "must be 1-64 lowercase letters"),
    (good_event("b6", charging="maybe"), "charging", "must be true or false"),
    (good_event("b7", session_seconds="long"), "session_seconds", "must be a number, got a string"),
    ({k: v for k, v in good_event("b8").items() if k != "network"}, "network", "required value is empty"),
    (good_event("b9", colour="red"), "colour", "unknown field; expected one of event_id"),
])
def test_a_bad_event_is_rejected_with_its_field_and_the_good_ones_still_accepted(
        events_client: TestClient, event: dict[str, Any], field: str, reason: str) -> None:
    ok_id = f"ok-{event['event_id']}"
    response = post(events_client, [good_event(ok_id), event])
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 1
    [error] = body["rejected"]
    assert error["loc"] == ["body", "events", 1, field]
    assert error["msg"].startswith(reason)


def test_a_batch_with_no_valid_event_is_a_422_naming_each(events_client: TestClient) -> None:
    response = post(events_client, ["not an object", good_event("x1", battery=-1),
                                    good_event("dup"), good_event("dup")])
    assert response.status_code == 202  # the first "dup" is valid
    response = post(events_client, ["not an object", good_event("x2", battery=-1)])
    assert response.status_code == 422
    locs = [e["loc"] for e in response.json()["detail"]]
    assert locs == [["body", "events", 0], ["body", "events", 1, "battery"]]


def test_duplicates_and_out_of_order_events_in_one_batch(events_client: TestClient) -> None:
    late = good_event("ooo-2", timestamp="2026-03-02T07:00:00Z")
    response = post(events_client, [good_event("ooo-1"), late, good_event("ooo-1")])
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2  # out of order is fine; the second ooo-1 is refused
    assert body["rejected"] == [{"loc": ["body", "events", 2, "event_id"],
                                 "msg": "duplicate event_id within the input", "type": "value_error"}]


@pytest.mark.parametrize(("body", "status", "loc"), [
    (b"{not json", 422, ["body"]),
    (b'{"events": []}', 422, ["body", "events"]),
    (b'{"events": {"a": 1}}', 422, ["body", "events"]),
    (b"[]", 422, ["body", "events"]),
])
def test_malformed_bodies_are_422(events_client: TestClient, body: bytes, status: int,
                                  loc: list[str]) -> None:
    response = events_client.post("/v1/events", content=body,
                                  headers={"x-api-key": KEY, "content-type": "application/json"})
    assert response.status_code == status
    assert response.json()["detail"][0]["loc"] == loc


def test_events_need_the_api_key_and_respect_the_limits(events_client: TestClient) -> None:
    assert post(events_client, [good_event("k1")], key=None).status_code == 401
    assert post(events_client, [good_event("k1")], key="wrong").status_code == 401
    too_many = [good_event(f"m{i}") for i in range(501)]
    response = events_client.post("/v1/events", content=b'{"events": [' + b",".join(
        [b"{}"] * 501) + b"]}", headers={"x-api-key": KEY})
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"].startswith("at most 500 events per request")
    assert post(events_client, too_many).status_code == 422  # 501 full events: too many


def test_the_stream_down_is_a_503_and_nothing_is_accepted(skew_world: StreamWorld) -> None:
    serving = ServingSettings(**{**skew_world.settings.model_dump(), "api_key": KEY,
                                 "registry_poll_seconds": 0, "log_json": False,
                                 "redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(serving), raise_server_exceptions=False) as client:
        response = post(client, [good_event("down-1")])
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "nothing was accepted" in response.json()["detail"]
        assert "event_stream_unreachable" in client.get("/readyz").json()["reasons"]
