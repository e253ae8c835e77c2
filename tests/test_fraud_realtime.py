"""fraud in real time, on the small world of test_fraud.py in a real Redis:

- one implementation: the card's windows that the server evaluates at the request's time from
  the payments the stream pushes (`realtime.customer_spending_at`) equal, at every payment of
  the world, the batch rows of customer_spending_fv that training reads;
- payments posted to `POST /v1/fraud/events` reach the online store through the stream
  processor, and `POST /v1/fraud/predict` then answers each later payment with the features
  and the score the offline point-in-time rows give it.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
import yaml
from conftest import REDIS_TEST_URL
from test_fraud import SECRET, write_book_world

from feastflow.plugins import use_case_function, use_case_module
from feastflow.ranking import REQUEST_ID
from feastflow.realtime import EntityState, RealtimeFeatures
from feastflow.settings import FEATURE_REPO, Settings
from feastflow.spec import ModelSpec, load_spec
from feastflow.store import open_store
from pipelines.datasets import build_event_set
from pipelines.features import event_log_connection

KEY = "fraud-events-key"
HISTORY = pd.Timedelta(days=40, hours=12)  # the log's history; the rest arrives as events


def small_model_repo(root: Path) -> Path:
    """A copy of the feature repo whose fraud split and model fit the small world."""
    repo = root / "feature_repo"
    shutil.copytree(FEATURE_REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    path = repo / "fraud" / "model.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["split"].update(holdout_days=5, train_days=20, warmup_days=10)
    raw["model"].update(num_boost_round=30, blend=[])
    raw["model"]["params"].update(max_bin=63, min_data_in_leaf=20)
    path.write_text(yaml.safe_dump(raw))
    return repo


def logged_payments(settings: Settings) -> pd.DataFrame:
    """The event log, in transaction order, timestamps in microseconds (UTC)."""
    con = event_log_connection(settings.events_dir("fraud"))
    events = con.execute("SELECT * FROM all_events ORDER BY transaction_id").df()
    events["timestamp"] = pd.to_datetime(events["timestamp"], utc=True).astype(
        "datetime64[us, UTC]")
    return events


@pytest.fixture(scope="module")
def history_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, pd.DataFrame]:
    """The small world's first 40.5 days ingested, feature tables computed, applied (Redis
    profile, db 13 of the test Redis); the raw world returned whole."""
    from pipelines.feast_ops import apply_repo
    from pipelines.features import compute_feature_tables
    from pipelines.ingest import ingest_frame

    url = REDIS_TEST_URL.rsplit("/", 1)[0] + "/13"
    redis.Redis.from_url(url).flushdb()
    root = tmp_path_factory.mktemp("fraud_rt")
    write_book_world(root / "data")
    settings = Settings(home=root / "var", data_dir=root / "data", user_hash_secret=SECRET,
                        feature_repo=small_model_repo(root),
                        profile="redis", redis_url=url, api_key=KEY,
                        stream_log_flush_seconds=0.2, stream_block_ms=20)
    spec = load_spec("fraud", settings.feature_repo)
    raw = use_case_function(spec, spec.loader.module, spec.loader.function)(settings.data_dir)
    history = raw[raw["timestamp"] < raw["timestamp"].min().floor("D") + HISTORY]
    ingest_frame(history, spec.event_log, settings.events_dir("fraud"), SECRET)
    compute_feature_tables(settings, spec)
    apply_repo(settings, "fraud")
    return settings, raw


def processor_reading(settings: Settings, timeout_s: float = 900.0) -> None:
    """Block until `feastflow stream` reads the use case's stream (a loaded machine takes a
    while to start it)."""
    from feastflow.stream import open_event_stream

    stream = open_event_stream(settings, "fraud")
    client = redis.Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ResponseError):  # no stream or group yet
                if any(g["consumers"] for g in client.xinfo_groups(stream.stream)):
                    return
            time.sleep(0.5)
    finally:
        stream.close()
        client.close()
    raise AssertionError(f"the stream processor did not read the stream in {timeout_s:.0f} s")


def folded_spending(spec: ModelSpec, events: pd.DataFrame) -> pd.DataFrame:
    """Each payment's card windows as the server evaluates them: the card's payments folded
    (as the stream processor folds them) up to just before it, read at its time."""
    realtime = RealtimeFeatures(spec)
    spending_at = getattr(use_case_module(spec, "realtime"), spec.realtime.at_request.function)
    states: dict[str, EntityState] = {}
    out = []
    ordered = events.sort_values(["timestamp", "event_id"])
    unix_us = ordered["timestamp"].astype("int64").tolist()
    for (event_id, card, amount), us in zip(
            ordered[["event_id", "customer_id", "tx_amount"]].itertuples(index=False),
            unix_us, strict=True):
        state = states.setdefault(card, EntityState())
        out.append({"event_id": event_id, **spending_at(state.features or {}, us)})
        realtime.apply(state, card, state.last_seq + 1, event_id, amount, us)
    return pd.DataFrame(out).set_index("event_id")


def test_the_windows_evaluated_at_request_time_equal_the_batch_rows_at_every_payment(
        history_world: tuple[Settings, pd.DataFrame]) -> None:
    settings, _ = history_world
    spec = load_spec("fraud", settings.feature_repo)
    events = logged_payments(settings)
    requests = events.copy()
    requests.insert(0, REQUEST_ID, range(len(requests)))
    batch = build_event_set(open_store(settings, "fraud"), requests, spec)
    batch.index = requests.set_index(REQUEST_ID).loc[batch[REQUEST_ID], "event_id"]
    folded = folded_spending(spec, events).loc[batch.index]
    assert folded["customer_tx_30d"].max() > 30  # 30 days of two payments a day are held
    assert folded["customer_tx_1h"].max() >= 1
    for column in folded.columns:
        expected = batch[column].to_numpy(float)
        got = folded[column].to_numpy(float)
        # the same doubles: counts, sums of cents, Unix seconds; None where no payment before
        np.testing.assert_array_equal(got, expected, err_msg=column)


def test_payments_posted_as_events_are_scored_online_as_the_offline_rows_score_them(
        history_world: tuple[Settings, pd.DataFrame]) -> None:
    """A small replay: 90 minutes of payments, each asked of `POST /v1/fraud/predict` at its
    time and then posted to `POST /v1/fraud/events`, through `feastflow serve` and `feastflow
    stream` on Redis. The batch views are kept online as of each payment (`batch_views_as_of`:
    materialized before each round of payments up to its start, a new round where a terminal's
    or card's label-delayed row moved meanwhile; the tables, computed from the history, hold
    those rows: labels are known 7 days late), so the card's velocity online comes from the
    stream alone. Then the log the processor wrote is folded into the batch tables and Feast's
    point-in-time rows of the same payments are scored offline."""
    from pipelines.demo import REPLAY_SERVER_ENV, running_processor, running_server
    from pipelines.features import compute_feature_tables
    from pipelines.replay import online_beside_offline, replay_events, wait_for_log
    from pipelines.training import train_use_case
    from registry import lifecycle

    settings, raw = history_world
    spec = load_spec("fraud", settings.feature_repo)
    trained = train_use_case(settings, spec, progress=lambda _: None)
    registry = lifecycle.Registry(settings.tracking_uri)
    registry.set_alias(spec.registered_model_name, lifecycle.CHAMPION, trained.version)
    start = raw["timestamp"].min().floor("D") + HISTORY
    live = raw[(raw["timestamp"] >= start) & (raw["timestamp"] < start + pd.Timedelta(minutes=90))]
    assert len(live) > 20

    # a loaded machine takes minutes to start the server: generous deadlines, fraud alone; no
    # feature cache: its 2.5-5 s would answer a terminal's second payment with the row read
    # before the materialization in between (the CI's one failure: 8 payments in a window of 7)
    with running_server(settings, "fraud", timeout_s=900,
                        extra_env={**REPLAY_SERVER_ENV, "FEASTFLOW_USE_CASES": "fraud"}) as url, \
            running_processor(settings, "fraud"):
        processor_reading(settings)
        stats = replay_events(url, KEY, settings, spec, live, keep_answers=True,
                              batch_views_as_of=True)
    assert stats.predictions == len(live) and stats.fallbacks == {"model": len(live)}
    # payments share rounds (one materialization each), and rows moving mid-round split them
    assert 1 < stats.rounds < len(live) and stats.materializations == stats.rounds
    assert stats.rounds_ended_by_rows > 0
    wait_for_log(settings, spec, live["event_id"].tolist())
    compute_feature_tables(settings, spec)

    report = online_beside_offline(settings, spec, stats, top_k=5)
    assert report["model_version"] == trained.version and report["events"] == len(live)
    # the served answer rounds to 6 decimals
    assert report["max_abs_score_difference"] <= 1e-6 and report["share_over_1e-6"] == 0
    assert report["online"] == pytest.approx(report["offline"], abs=1e-6)
    rows = build_event_set(open_store(settings, "fraud"), requests_of(settings, live), spec)
    # some cards paid twice during the replay: their second payment's velocity online could
    # only come from the stream (the batch views were materialized from the history)
    assert (rows["customer_last_tx_unix"].to_numpy(float) >= start.timestamp()).any()


def requests_of(settings: Settings, raw: pd.DataFrame) -> pd.DataFrame:
    """These raw payments as the log holds them (hashed cards), numbered as requests."""
    events = logged_payments(settings)
    requests = events[events["event_id"].isin(raw["event_id"])].reset_index(drop=True)
    requests.insert(0, REQUEST_ID, range(len(requests)))
    return requests
