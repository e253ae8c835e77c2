"""The simulator: deterministic, people-like, learnable but not trivially predictable."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pandas as pd
import pytest

from feastflow.events import validate_events
from feastflow.settings import FEATURE_REPO
from feastflow.spec import load_spec
from feature_repo.next_app.world import (
    DRIFT_APP,
    EVENT_COLUMNS,
    Drift,
    drift_assignments,
    generate_events,
)


def test_same_seed_same_events_and_another_seed_differs(small_events: pd.DataFrame) -> None:
    again = generate_events(users=40, days=35, seed=11)
    pd.testing.assert_frame_equal(small_events, again)
    other = generate_events(users=40, days=35, seed=12)
    assert len(other) != len(small_events) or not other["app"].equals(small_events["app"])


def test_events_pass_the_schema(small_events: pd.DataFrame) -> None:
    contract = load_spec("next_app", FEATURE_REPO).event_log
    clean, errors = validate_events(small_events, contract, now=pd.Timestamp("2030-01-01", tz="UTC"))
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


# --- drift ---------------------------------------------------------------------------------

# sha256 of generate_events(users=6, days=14, seed=3).to_csv(index=False) before Drift existed:
# three of these users have a habit change on day 8, so that path is covered too.
NO_DRIFT_CSV_SHA256 = "9f1473a2f98e7cb52ec6be3d0f2711b51446a23d6ce86eaa8cef0da7605fa56f"
# ... and with drift=Drift(start_day=5, adopt_share=0.5, shift_share=0.5, shift_hours=6) before
# habit_share and reopen_boost existed
ADOPT_SHIFT_DRIFT_CSV_SHA256 = "6b800d5004dca6c0a21c0656049aae1ffa4a93bb05d5e65f3955d726c6413699"
DRIFT = Drift(start_day=7, adopt_share=0.4, shift_share=0.4, shift_hours=6)
WORLD = {"users": 40, "days": 14, "seed": 5}


def _day(events: pd.DataFrame) -> pd.Series:
    return (events["timestamp"] - events["timestamp"].min().normalize()).dt.days


def _circular_mean_hour(timestamps: pd.Series) -> float:
    angle = 2 * np.pi * (timestamps.dt.hour + timestamps.dt.minute / 60) / 24
    return float(np.arctan2(np.sin(angle).mean(), np.cos(angle).mean()) * 24 / (2 * np.pi)) % 24


@pytest.fixture(scope="module")
def plain_and_drifted() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same small world without and with DRIFT (40 users, 14 days, drift from day 7)."""
    return generate_events(**WORLD), generate_events(**WORLD, drift=DRIFT)


def test_without_drift_the_events_are_those_of_before_drift_existed() -> None:
    events = generate_events(users=6, days=14, seed=3)
    assert len(events) == 3772
    assert hashlib.sha256(events.to_csv(index=False).encode()).hexdigest() == NO_DRIFT_CSV_SHA256
    # a drift that touches nobody changes nothing either, nor one whose habit changes nothing
    for nobody in (Drift(start_day=5, adopt_share=0.0, shift_share=0.0, habit_share=0.0),
                   Drift(start_day=5, adopt_share=0.0, shift_share=0.0, habit_share=1.0,
                         reopen_boost=0.0, habit_taste=1.0)):
        pd.testing.assert_frame_equal(events, generate_events(users=6, days=14, seed=3,
                                                              drift=nobody))


@pytest.mark.parametrize("no_habit", [{"habit_share": 0.0},
                                      {"reopen_boost": 0.0, "habit_taste": 1.0}])
def test_a_drift_without_habit_users_is_the_drift_of_before_they_existed(no_habit: dict) -> None:
    drift = Drift(start_day=5, adopt_share=0.5, shift_share=0.5, shift_hours=6, **no_habit)
    events = generate_events(users=6, days=14, seed=3, drift=drift)
    digest = hashlib.sha256(events.to_csv(index=False).encode()).hexdigest()
    assert digest == ADOPT_SHIFT_DRIFT_CSV_SHA256


def test_events_before_the_drift_are_unchanged(plain_and_drifted) -> None:
    plain, drifted = plain_and_drifted
    before = _day(drifted) < DRIFT.start_day
    assert before.any() and (~before).any()
    pd.testing.assert_frame_equal(
        drifted[before].reset_index(drop=True),
        plain[_day(plain) < DRIFT.start_day].reset_index(drop=True),
    )
    assert not drifted[~before].reset_index(drop=True).equals(
        plain[_day(plain) >= DRIFT.start_day].reset_index(drop=True))
    pd.testing.assert_frame_equal(drifted, generate_events(**WORLD, drift=DRIFT))  # reproducible


def test_adopters_open_the_new_app_from_the_drift_day_only(plain_and_drifted) -> None:
    plain, drifted = plain_and_drifted
    assert DRIFT_APP not in set(plain["app"])
    nova = drifted[drifted["app"] == DRIFT_APP]
    assert (_day(drifted)[nova.index] >= DRIFT.start_day).all()
    roles = drift_assignments(WORLD["users"], WORLD["seed"], DRIFT)
    adopters = set(roles.loc[roles["adopts"], "user_id"])
    # a habit user (DRIFT's defaults) with few unlocks may stay inside its last apps all week
    assert adopters - set(roles.loc[roles["habit"], "user_id"]) <= set(nova["user_id"]) <= adopters
    assert abs(len(adopters) / WORLD["users"] - DRIFT.adopt_share) <= 0.2
    after = drifted[(_day(drifted) >= DRIFT.start_day) & drifted["user_id"].isin(adopters)]
    assert (after["app"] == DRIFT_APP).mean() > 0.15  # a favourite: opened often
    # a larger share keeps the same adopters and adds some
    more = drift_assignments(WORLD["users"], WORLD["seed"], Drift(start_day=7, adopt_share=0.8))
    assert adopters < set(more.loc[more["adopts"], "user_id"])


def test_shifted_users_live_their_day_later(plain_and_drifted) -> None:
    _, drifted = plain_and_drifted
    roles = drift_assignments(WORLD["users"], WORLD["seed"], DRIFT)
    assert set(roles.loc[roles["shift_hours"] > 0, "shift_hours"]) == {DRIFT.shift_hours}
    shifted = set(roles.loc[roles["shift_hours"] > 0, "user_id"])
    assert abs(len(shifted) / WORLD["users"] - DRIFT.shift_share) <= 0.2
    day = _day(drifted)
    week_before = (day >= DRIFT.start_day - 7) & (day < DRIFT.start_day)
    week_after = (day >= DRIFT.start_day) & (day < DRIFT.start_day + 7)
    for users, expected in ((shifted, DRIFT.shift_hours), (set(roles["user_id"]) - shifted, 0)):
        mine = drifted["user_id"].isin(users)
        moved = (_circular_mean_hour(drifted.loc[mine & week_after, "timestamp"])
                 - _circular_mean_hour(drifted.loc[mine & week_before, "timestamp"]))
        moved = (moved + 12) % 24 - 12
        assert abs(moved - expected) < 1.0, (expected, moved)


def _reopens(events: pd.DataFrame) -> pd.Series:
    """Per event: is its app one of the user's last 3 apps (False for a user's first event)?"""
    ordered = events.sort_values(["user_id", "timestamp", "event_id"])
    previous = ordered.groupby("user_id")["app"]
    hit = pd.Series(False, index=ordered.index)
    for lag in (1, 2, 3):
        hit |= ordered["app"] == previous.shift(lag)
    return hit.reindex(events.index)


HABIT_DRIFT = Drift(start_day=7, adopt_share=0.0, shift_share=0.0, habit_share=0.5,
                    reopen_boost=1.0, habit_taste=1.0)


def test_habit_users_reopen_their_last_apps_more_from_the_drift_day_only(plain_and_drifted
                                                                          ) -> None:
    plain, _ = plain_and_drifted
    habitual = generate_events(**WORLD, drift=HABIT_DRIFT)
    roles = drift_assignments(WORLD["users"], WORLD["seed"], HABIT_DRIFT)
    habit_users = set(roles.loc[roles["habit"], "user_id"])
    assert abs(len(habit_users) / WORLD["users"] - HABIT_DRIFT.habit_share) <= 0.2
    # the others, and everybody before the drift day, live exactly the world without drift
    untouched = ~habitual["user_id"].isin(habit_users) | (_day(habitual) < HABIT_DRIFT.start_day)
    pd.testing.assert_frame_equal(
        habitual[untouched].reset_index(drop=True),
        plain[~plain["user_id"].isin(habit_users) | (_day(plain) < HABIT_DRIFT.start_day)]
        .reset_index(drop=True))
    mine = habitual["user_id"].isin(habit_users)
    after = _day(habitual) >= HABIT_DRIFT.start_day
    reopens = _reopens(habitual)
    before_share, after_share = reopens[mine & ~after].mean(), reopens[mine & after].mean()
    others = _reopens(plain)[~plain["user_id"].isin(habit_users)
                             & (_day(plain) >= HABIT_DRIFT.start_day)].mean()
    assert 0.35 < before_share < 0.55 and 0.35 < others < 0.55  # people reopen some apps ...
    assert after_share > before_share + 0.15  # ... habit users far more, from the drift day
    # a stronger boost, a stronger habit; a larger share keeps the same habit users and adds some
    stronger = generate_events(**WORLD, drift=dataclasses.replace(HABIT_DRIFT, reopen_boost=2.0))
    assert _reopens(stronger)[stronger["user_id"].isin(habit_users)
                              & (_day(stronger) >= HABIT_DRIFT.start_day)].mean() > after_share
    more = drift_assignments(WORLD["users"], WORLD["seed"], Drift(start_day=7, habit_share=0.9))
    assert habit_users < set(more.loc[more["habit"], "user_id"])


def test_habit_users_lean_less_on_their_long_run_taste(plain_and_drifted) -> None:
    plain, _ = plain_and_drifted
    drift = dataclasses.replace(HABIT_DRIFT, reopen_boost=0.0, habit_taste=0.0)
    tasteless = generate_events(**WORLD, drift=drift)
    roles = drift_assignments(WORLD["users"], WORLD["seed"], drift)
    habit_users = set(roles.loc[roles["habit"], "user_id"])

    def favourite_share(events: pd.DataFrame) -> float:
        """The share of unlocks of each habit user that open their 3 most used apps of the days
        before the drift, after the drift day (all users pooled)."""
        mine = events[events["user_id"].isin(habit_users)]
        before = mine[_day(mine) < drift.start_day]
        top = before.groupby("user_id")["app"].agg(lambda a: set(a.value_counts().index[:3]))
        after = mine[_day(mine) >= drift.start_day]
        return float(np.mean([app in top[user] for user, app in zip(after["user_id"],
                                                                   after["app"], strict=True)]))

    assert favourite_share(tasteless) < favourite_share(plain) - 0.15


def test_who_turns_habitual_does_not_depend_on_who_adopts_or_shifts() -> None:
    roles = drift_assignments(400, 5, Drift(start_day=7, adopt_share=0.5, shift_share=0.5,
                                            habit_share=0.5))
    for other in (roles["adopts"], roles["shift_hours"] > 0):
        assert abs(roles.loc[other, "habit"].mean() - roles.loc[~other, "habit"].mean()) < 0.15


@pytest.mark.parametrize(("fields", "message"), [
    ({"start_day": 0}, "start_day must be >= 1"),
    ({"start_day": 2.5}, "start_day must be an integer"),
    ({"adopt_share": 1.5}, "adopt_share must be between 0 and 1"),
    ({"adopt_share": float("nan")}, "adopt_share must be between 0 and 1"),
    ({"shift_share": -0.1}, "shift_share must be between 0 and 1"),
    ({"shift_share": "half"}, "shift_share must be a number"),
    ({"shift_hours": 0}, "shift_hours must be between 1 and 23"),
    ({"shift_hours": 24}, "shift_hours must be between 1 and 23"),
    ({"shift_hours": 2.0}, "shift_hours must be an integer"),
    ({"habit_share": 1.01}, "habit_share must be between 0 and 1"),
    ({"habit_share": None}, "habit_share must be a number"),
    ({"reopen_boost": -0.5}, "reopen_boost must be a finite number >= 0"),
    ({"reopen_boost": float("nan")}, "reopen_boost must be a finite number >= 0"),
    ({"reopen_boost": float("inf")}, "reopen_boost must be a finite number >= 0"),
    ({"reopen_boost": "strong"}, "reopen_boost must be a number"),
    ({"reopen_boost": True}, "reopen_boost must be a number"),
    ({"habit_taste": 1.5}, "habit_taste must be between 0 and 1"),
    ({"habit_taste": -0.1}, "habit_taste must be between 0 and 1"),
    ({"habit_taste": float("nan")}, "habit_taste must be between 0 and 1"),
    ({"habit_taste": "less"}, "habit_taste must be a number"),
])
def test_invalid_drift_fields_are_refused_by_name(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Drift(**{"start_day": 5, **fields})


def test_a_drift_must_start_inside_the_world() -> None:
    with pytest.raises(ValueError, match=r"drift\.start_day must be < days"):
        generate_events(users=2, days=5, seed=1, drift=Drift(start_day=5))
