"""The real-time fold: one implementation for batch tables and the stream, idempotent, order-proof."""

from __future__ import annotations

import random

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feastflow.realtime import EntityState, RealtimeFeatures
from feastflow.settings import FEATURE_REPO
from feastflow.spec import load_spec

SPEC = load_spec("next_app", FEATURE_REPO)
S = 1_000_000  # microseconds per second


@pytest.fixture(scope="module")
def rt() -> RealtimeFeatures:
    return RealtimeFeatures(SPEC)


def fold(rt: RealtimeFeatures, events: list[tuple[int, str, str]], state: EntityState | None = None,
         start_seq: int = 0) -> tuple[EntityState, list]:
    state = state or EntityState()
    rows = []
    for seq, (us, event_id, app) in enumerate(events, start=start_seq):
        rows += rt.apply(state, "u1", seq, event_id, app, us)
    return state, rows


def test_rows_carry_the_use_cases_features_stamped_at_the_event(rt: RealtimeFeatures) -> None:
    state, rows = fold(rt, [(10 * S, "e1", "mail"), (20 * S, "e2", "maps"), (30 * S, "e3", "mail")])
    last = [r for r in rows if r.table == "user_last_app"][-1]
    assert last.unix_us == 30 * S
    assert last.values == {"user_id": "u1", "last_app": "mail", "last_unlock_unix": 30,
                           "recent_apps": ["mail", "maps"], "unlocks_5m": 3, "unlocks_1h": 3,
                           "distinct_apps_1h": 2}
    recency = {r.values["app"]: r.values["last_opened_unix"] for r in rows
               if r.table == "user_app_recency"}
    assert recency == {"mail": 30, "maps": 20}
    assert state.applied == 3


def test_session_counts_cover_the_5_minutes_and_the_hour_up_to_the_last_unlock(
        rt: RealtimeFeatures) -> None:
    _, rows = fold(rt, [(0, "e0", "mail"), (3000 * S, "e1", "maps"), (3500 * S, "e2", "chat"),
                        (3700 * S, "e3", "chat")])
    last = [r for r in rows if r.table == "user_last_app"][-1].values
    # e0 is 3700 s before the last unlock: outside the hour; e1 is 700 s before: outside 5 min
    assert (last["unlocks_5m"], last["unlocks_1h"], last["distinct_apps_1h"]) == (2, 3, 2)


def test_an_event_delivered_twice_is_applied_once(rt: RealtimeFeatures) -> None:
    state, _ = fold(rt, [(10 * S, "e1", "mail"), (20 * S, "e2", "maps")])
    before = state.encode()
    assert rt.apply(state, "u1", 1, "e2", "maps", 20 * S) == []  # same stream position again
    assert rt.apply(state, "u1", 7, "e1", "mail", 10 * S) == []  # same event, new position
    assert rt.apply(state, "u1", 8, "e2", "maps", 20 * S) == []
    assert state.applied == 2
    assert EntityState.decode(state.encode()).window == EntityState.decode(before).window


def test_a_late_event_lands_in_its_place_and_the_row_is_stamped_later(rt: RealtimeFeatures) -> None:
    state, _ = fold(rt, [(10 * S, "e1", "mail"), (30 * S, "e3", "mail")])
    stamped = state.stamped_us
    rows = rt.apply(state, "u1", 5, "e2", "maps", 20 * S)
    entity = [r for r in rows if r.table == "user_last_app"]
    assert entity[0].values["recent_apps"] == ["mail", "maps"]
    assert entity[0].values["last_app"] == "mail"  # the newest event is still the newest
    # Feast's Redis writer drops a row whose event time is not newer than the stored one
    assert entity[0].unix_us == stamped + 1
    # an older open never moves an app's last-opened time back; it does count in the session
    rows = rt.apply(state, "u1", 6, "e0", "mail", 5 * S)
    assert [r.table for r in rows] == ["user_last_app"]
    assert rows[0].values["unlocks_5m"] == 4 and rows[0].unix_us == stamped + 2
    assert state.item_last_us["mail"] == 30 * S


def test_an_event_older_than_the_whole_window_changes_nothing_online(rt: RealtimeFeatures) -> None:
    n = SPEC.realtime.window_events
    state, _ = fold(rt, [((100 + i) * S, f"e{i}", f"app{i % 3}") for i in range(n)])
    rows = rt.apply(state, "u1", n, "old", "app9", 1 * S)
    assert [r.table for r in rows] == ["user_app_recency"]  # app9 was never opened before
    assert len(state.window) == n and state.window[0][1] == "e0"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from(["a", "b", "c", "d", "e", "f"])),
                min_size=1, max_size=45), st.randoms(use_true_random=False))
def test_any_delivery_order_ends_in_the_state_of_the_time_ordered_fold(
        raw: list[tuple[int, str]], rnd: random.Random) -> None:
    rt = RealtimeFeatures(SPEC)
    events = [(second * S, f"e{i:03d}", app) for i, (second, app) in enumerate(raw)]
    ordered, _ = fold(rt, sorted(events))
    shuffled = events[:]
    rnd.shuffle(shuffled)
    streamed, rows = fold(rt, shuffled)
    for seq, (us, event_id, app) in enumerate(shuffled[: len(shuffled) // 2]):
        assert rt.apply(streamed, "u1", seq, event_id, app, us) == []  # re-read after a crash
    assert streamed.window == ordered.window
    assert streamed.item_last_us == ordered.item_last_us
    assert streamed.features == ordered.features
    assert streamed.applied == len(events)
    stamps = [r.unix_us for r in rows if r.table == "user_last_app"]
    assert stamps == sorted(set(stamps))  # strictly growing: Feast's writer keeps every one


def test_batch_tables_are_the_fold_in_time_order(rt: RealtimeFeatures) -> None:
    events = pd.DataFrame({
        "user_id": ["u1", "u2", "u1", "u1"],
        "app": ["mail", "maps", "chat", "maps"],
        "event_id": ["a", "b", "c", "d"],
        "timestamp": pd.to_datetime([30, 10, 10, 30], unit="s", utc=True),
    })
    tables = rt.batch_tables(events)
    last = tables["user_last_app"]
    assert str(last["event_timestamp"].dtype) == "datetime64[us, UTC]"
    u1 = last[last["user_id"] == "u1"]
    # u1: chat at 10 s, then a and d both at 30 s: the second row at 30 s is stamped 1 us later
    assert u1["event_timestamp"].astype("int64").tolist() == [10 * S, 30 * S, 30 * S + 1]
    assert u1["recent_apps"].iloc[-1] == ["maps", "mail", "chat"]
    recency = tables["user_app_recency"]
    assert sorted(zip(recency["user_id"], recency["app"], recency["last_opened_unix"],
                      strict=True)) == [("u1", "chat", 10), ("u1", "mail", 30), ("u1", "maps", 30),
                                        ("u2", "maps", 10)]
    states = rt.states_from_log(events)
    assert states["u1"].applied == 3 and states["u1"].last_seq == -1
