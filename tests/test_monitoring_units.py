"""Monitoring's statistics and the replay's rounds, on small hand-made data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feastflow.settings import FEATURE_REPO
from feastflow.spec import load_spec
from pipelines.monitoring import (
    MonitorError,
    accuracy_by_variant,
    calendar_weights,
    difference,
    feature_drift,
    hit_rate,
    load_served,
    noise_floor,
    psi,
    served_inputs,
)
from pipelines.replay import event_body, rounds


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 20_000)
    same = psi(reference, rng.normal(0, 1, 5_000), "x")
    shifted = psi(reference, rng.normal(1, 1, 5_000), "x")
    assert same.psi < 0.01
    assert shifted.psi > 0.25
    # ten reference deciles plus the missing bin, each holding a tenth of the reference
    assert len(same.bins) == 11 and same.bins[-1] == "missing"
    assert np.allclose(same.reference_share[:10], 0.1, atol=0.002)


def test_psi_bins_come_from_the_reference_only() -> None:
    reference = np.arange(100, dtype=float)
    # every current value above the reference's range lands in its top bin
    drift = psi(reference, np.full(50, 1_000.0), "x", bins=4)
    assert drift.bins[:4] == ["<= 24.75", "<= 49.5", "<= 74.25", "> 74.25"]
    assert drift.current_share[3] == pytest.approx(1.0, abs=1e-3)
    expected = sum((c - r) * math.log(c / r)
                   for c, r in zip(drift.current_share, drift.reference_share, strict=True))
    assert drift.psi == pytest.approx(expected)


def test_psi_counts_missing_values_and_unseen_categories_in_bins_of_their_own() -> None:
    reference = np.array([0.0] * 50 + [1.0] * 50)
    current = np.array([0.0] * 40 + [2.0] * 30 + [np.nan] * 30)
    drift = psi(reference, current, "location", categorical=True, labels=["home", "work"])
    assert drift.bins == ["home", "work", "other", "missing"]
    assert drift.current_share[2] == pytest.approx(0.3, abs=1e-3)
    assert drift.current_share[3] == pytest.approx(0.3, abs=1e-3)
    assert drift.current_missing == pytest.approx(0.3)
    assert drift.psi > 1.0


def test_psi_refuses_an_empty_side() -> None:
    with pytest.raises(ValueError, match="x: PSI needs values on both sides"):
        psi(np.array([]), np.array([1.0]), "x")


def test_wilson_interval() -> None:
    rate = hit_rate(50, 100)
    assert rate.rate == 0.5
    assert rate.low == pytest.approx(0.4038, abs=1e-4)
    assert rate.high == pytest.approx(0.5962, abs=1e-4)
    assert math.isnan(hit_rate(0, 0).rate)


def test_accuracy_per_variant_keeps_shadow_scorings_apart() -> None:
    answers = pd.DataFrame({
        "variant": ["champion", "champion", "champion", "challenger", "challenger"],
        "shadow": [False, False, False, False, True],
        "fallback": [None, None, "popular_at_hour", None, None],
        "model_version": ["1", "1", "1", "2", "2"],
        "items": [["a", "b"], ["b", "a"], ["c", "d", "e", "f", "a"], ["a"], ["b"]],
        "actual": ["a", "a", "a", "a", None],
    })
    accuracy = accuracy_by_variant(answers, k=4)
    assert set(accuracy) == {"champion", "challenger"}  # the shadow row has no next event
    champion = accuracy["champion"]
    assert (champion["top1"]["hits"], champion["top1"]["n"]) == (1, 3)
    assert champion["top4"]["hits"] == 2  # "a" is 5th in the third answer
    assert champion["fallback_share"] == pytest.approx(1 / 3)
    diff = difference(accuracy["challenger"]["top1"], champion["top1"])
    assert diff["diff"] == pytest.approx(1 - 1 / 3)


def test_served_inputs_unpacks_the_logged_candidates() -> None:
    records = pd.DataFrame({"features": [
        '{"candidates": ["a", "b"], "x": [1.0, null], "y": [3, 4]}',
        "{}",  # a fallback answer logs no features
        '{"candidates": ["c"], "x": [5.0]}',
    ]}, index=[10, 11, 12])
    frame = served_inputs(records, ["x", "y"])
    assert frame["request"].tolist() == [10, 10, 12]
    assert frame["item"].tolist() == ["a", "b", "c"]
    assert frame["x"].tolist()[0] == 1.0 and math.isnan(frame["x"].tolist()[1])
    assert math.isnan(frame["y"].tolist()[2])  # not logged: missing


def test_replay_rounds_hold_one_event_per_user_and_never_span_midnight() -> None:
    ts = pd.to_datetime(["2026-01-01T23:58:00", "2026-01-01T23:59:00", "2026-01-01T23:59:30",
                         "2026-01-02T00:00:10", "2026-01-02T00:01:00", "2026-01-02T00:02:00"],
                        utc=True)
    events = pd.DataFrame({"user_id": ["u1", "u2", "u1", "u3", "u4", "u3"], "timestamp": ts})
    parts = list(rounds(events, "user_id", "timestamp", max_size=10))
    assert [p["user_id"].tolist() for p in parts] == [["u1", "u2"], ["u1"], ["u3", "u4"], ["u3"]]
    assert sum(len(p) for p in parts) == len(events)
    assert [len(p) for p in rounds(events, "user_id", "timestamp", max_size=1)] == [1] * 6


def test_event_body_drops_missing_values() -> None:
    body = event_body({"event_id": "e1", "user_id": "u", "timestamp": pd.Timestamp(
        "2026-01-01T08:00", tz="UTC"), "app": "mail", "secs_since_prev_unlock": float("nan"),
        "battery": np.int64(40), "charging": np.bool_(False)},
        load_spec("next_app", FEATURE_REPO))
    assert body == {"event_id": "e1", "user_id": "u", "timestamp": "2026-01-01T08:00:00+00:00",
                    "app": "mail", "battery": 40, "charging": False}


def test_the_reference_is_weighted_to_the_windows_days_of_the_week() -> None:
    # a weekday/weekend world where location depends on the day: a Sunday's window must be
    # compared with the reference's Sundays, not flagged because nobody is at work on Sundays
    rng = np.random.default_rng(1)
    dow = rng.integers(0, 7, 20_000).astype(float)
    location = np.where(dow < 5, rng.choice([0.0, 1.0], 20_000), 0.0)
    reference = pd.DataFrame({"day_of_week": dow, "location": location})
    sunday = pd.DataFrame({"day_of_week": np.full(3_000, 6.0), "location": np.zeros(3_000)})
    weights = calendar_weights(reference["day_of_week"], sunday["day_of_week"])
    assert weights[dow == 6].sum() == pytest.approx(len(reference))
    assert (weights[dow != 6] == 0).all()
    drifts = {d.name: d for d in feature_drift(reference, sunday, 10, {"location": ["a", "b"]},
                                               match_on="day_of_week")}
    assert drifts["location"].psi < 0.01
    unmatched = {d.name: d for d in feature_drift(reference, sunday, 10, {"location": ["a", "b"]})}
    assert unmatched["location"].psi > 0.25
    assert drifts["day_of_week"].psi > 1  # the calendar itself is not re-weighted


def test_the_noise_floor_is_what_a_days_slice_of_the_reference_reads() -> None:
    # per_user: one value per user and day (a daily snapshot); per_request: fresh each request
    rng = np.random.default_rng(2)
    days, users, per_day = 14, 30, 400
    day = np.repeat(np.arange(days), per_day)
    user = rng.integers(0, users, days * per_day)
    level = rng.lognormal(3, 0.8, users)
    per_user = level[user] * rng.lognormal(0, 0.1, (days, users))[day, user]
    reference = pd.DataFrame({"per_user": per_user, "per_request": rng.normal(0, 1, len(day))})
    floor = noise_floor(reference, pd.Series(day), 1, 10, {})
    assert floor["per_user"] > 0.1  # thirty users a day: lumpy, whatever the row count
    assert floor["per_request"] < 0.05
    assert noise_floor(reference, pd.Series(day), days, 10, {}) == {}  # no shorter slice


def test_monitor_says_what_to_run_when_nothing_was_served(tmp_path: Path) -> None:
    with pytest.raises(MonitorError, match="FEASTFLOW_REQUEST_LOG_SAMPLE"):
        load_served(tmp_path / "served", days=7)


def test_monitor_refuses_an_empty_window(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from serving.request_log import PredictionLog

    at = datetime(2026, 3, 1, 8, tzinfo=UTC)
    with PredictionLog(tmp_path, sample=1.0, flush_seconds=60) as log:
        log.record({"request_id": "r1", "served_at": at, "request_ts": at, "user_hash": "u",
                    "variant": "champion", "model_version": "1", "fallback": None,
                    "items": ["a"], "scores": [1.0], "features": "{}", "latency_ms": 1.0,
                    "shadow": False})
    served, window = load_served(tmp_path, days=7)
    assert served["request_id"].tolist() == ["r1"]
    assert served["context"].isna().all()  # a record without context: skew leaves it out
    assert window.end - window.start == pd.Timedelta(days=7)
    with pytest.raises(MonitorError, match="is not before"):
        load_served(tmp_path, days=7, since=at, until=at)
    with pytest.raises(MonitorError, match="no served requests between"):
        load_served(tmp_path, days=7, until=datetime(2026, 1, 1, tzinfo=UTC))


def test_replay_waits_until_the_processor_has_logged_the_day(tmp_path: Path) -> None:
    import threading

    from feastflow.settings import Settings
    from feastflow.spec import load_spec
    from pipelines.replay import wait_for_log

    settings = Settings(home=tmp_path)
    spec = load_spec("next_app", settings.feature_repo)
    part = settings.events_dir(spec.name) / "date=2026-03-01" / "hour=08"
    part.mkdir(parents=True)

    def log(ids: list[str], name: str) -> None:
        pd.DataFrame({"event_id": ids, "timestamp": pd.to_datetime(
            ["2026-03-01T08:00:00"] * len(ids), utc=True).astype("datetime64[us, UTC]")}
                     ).to_parquet(part / name)

    log(["e1"], "a.parquet")
    late = threading.Timer(0.5, log, (["e2", "e3"], "b.parquet"))
    late.start()
    wait_for_log(settings, spec, ["e1", "e2", "e3"], timeout_s=30)  # returns once b.parquet lands
    late.join()
    with pytest.raises(TimeoutError, match="holds 3 of 4 replayed events"):
        wait_for_log(settings, spec, ["e1", "e2", "e3", "e4"], timeout_s=0.5)


def test_outcomes_tell_apart_two_payments_of_a_card_in_the_same_second(tmp_path: Path) -> None:
    """One card paid twice in the same second, a fraud and a genuine payment: each answer gets
    the label of the payment its logged context names (the transaction id), not either one."""
    from feastflow.privacy import hash_user_id
    from pipelines.ingest import ingest_frame
    from pipelines.monitoring.outcomes import labelled_outcomes

    spec = load_spec("fraud", FEATURE_REPO)
    at = pd.Timestamp("2018-08-01 10:00:00", tz="UTC")
    raw = pd.DataFrame({
        "event_id": ["tx-1", "tx-2", "tx-3"], "transaction_id": [1, 2, 3],
        "customer_id": ["7", "7", "8"], "terminal_id": [5, 6, 5],
        "timestamp": pd.Series([at, at, at + pd.Timedelta(days=20)]).astype("datetime64[us, UTC]"),
        "tx_amount": [10.5, 99.99, 1.0], "tx_fraud": [1, 0, 0]})
    assert ingest_frame(raw, spec.event_log, tmp_path / "events", "secret").rows_written == 3
    served = pd.DataFrame({
        "request_id": ["genuine", "fraud", "no_context", "other_payment"],
        "request_ts": [at] * 4, "user_hash": [hash_user_id("7", "secret")] * 4,
        "fallback": [None] * 4, "scores": [[0.9], [0.1], [0.5], [0.2]],
        "context": ['{"transaction_id": 2, "terminal_id": 6, "tx_amount": 99.99}',
                    '{"transaction_id": 1, "terminal_id": 5, "tx_amount": 10.5}', None,
                    '{"transaction_id": 9, "terminal_id": 6, "tx_amount": 99.99}']})
    out, _ = labelled_outcomes(served, tmp_path / "events", spec)
    by_request = out.set_index("request_id")
    assert by_request.loc["genuine", "label"] == 0.0
    assert by_request.loc["fraud", "label"] == 1.0
    # without a logged context the answer still meets its card's payment of that second
    assert by_request.loc["no_context", "matched"]
    # a transaction id the log never saw is no payment of the card's
    assert not by_request.loc["other_payment", "matched"]
