"""The simulator: deterministic, people-like, learnable but not trivially predictable."""

from __future__ import annotations

import pandas as pd

from feastflow.events import EVENT_COLUMNS, validate_events
from pipelines.generate import generate_events


def test_same_seed_same_events_and_another_seed_differs(small_events: pd.DataFrame) -> None:
    again = generate_events(users=40, days=35, seed=11)
    pd.testing.assert_frame_equal(small_events, again)
    other = generate_events(users=40, days=35, seed=12)
    assert len(other) != len(small_events) or not other["app"].equals(small_events["app"])


def test_events_pass_the_schema(small_events: pd.DataFrame) -> None:
    clean, errors = validate_events(small_events, now=pd.Timestamp("2030-01-01", tz="UTC"))
    assert errors == [] and list(clean.columns) == EVENT_COLUMNS and len(clean) == len(small_events)


def test_people_differ_in_activity_apps_and_context(small_events: pd.DataFrame) -> None:
    per_day = small_events.groupby("user_id").size() / 35
    assert per_day.min() < 15 and per_day.max() > 60  # a few to 100+ unlocks a day
    assert 60 <= small_events["app"].nunique() <= 120  # a long tail of apps
    assert set(small_events["location"]) == {"home", "work", "commute", "other"}
    assert small_events["charging"].any() and (small_events["battery"] < 20).any()
    assert (small_events["network"] == "cellular").mean() > 0.05


def test_context_carries_signal(small_events: pd.DataFrame) -> None:
    # work hours at work open more calendar/mail than evenings at home
    hour = small_events["timestamp"].dt.hour
    work = small_events[(small_events["location"] == "work")]
    home_evening = small_events[(small_events["location"] == "home") & (hour >= 19)]
    productive = {"calendar", "mail", "workmail", "meetup", "zoomcall", "teamsphere"}
    assert work["app"].isin(productive).mean() > 2 * home_evening["app"].isin(productive).mean()


def test_habits_change_for_some_users(small_events: pd.DataFrame) -> None:
    first = small_events[small_events["timestamp"] < small_events["timestamp"].min()
                         + pd.Timedelta(days=14)]
    last = small_events[small_events["timestamp"] > small_events["timestamp"].max()
                        - pd.Timedelta(days=7)]
    changed = 0
    for user, apps in last.groupby("user_id")["app"]:
        before = set(first.loc[first["user_id"] == user, "app"])
        new_share = (~apps.isin(before)).mean()
        changed += new_share > 0.1  # a new favourite app that did not exist for them before
    assert 2 <= changed <= 30
