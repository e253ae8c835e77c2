"""Point-in-time correctness on constructed events with known answers.

No feature value stamped at or after a label's time may appear in that label's training row:
not the label event itself, not later events of the same day, not later daily snapshots.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from feastflow.privacy import hash_user_id
from feastflow.ranking import REQUEST_ID
from feastflow.settings import Settings
from feastflow.spec import load_spec
from feastflow.store import apply_repo, open_store
from pipelines.datasets import build_ranking_set
from pipelines.features import compute_feature_tables
from pipelines.ingest import ingest_frame

SECRET = "pit-secret"
CONTEXT = {"secs_since_prev_unlock": 60.0, "session_seconds": 30.0, "location": "home",
           "battery": 70, "charging": False, "network": "wifi", "os_version": "android-14"}


def event(i: int, ts: str, app: str, user: str = "ann", **context: object) -> dict[str, object]:
    return {"event_id": f"e{i}", "user_id": user, "timestamp": pd.Timestamp(ts, tz="UTC"),
            "app": app, **{**CONTEXT, **context}}


EVENTS = [
    event(1, "2026-01-05 08:00:00", "mail"),
    event(2, "2026-01-05 09:00:00", "maps", location="commute"),
    event(3, "2026-01-05 09:30:00", "mail"),
    event(4, "2026-01-06 08:00:00", "calendar"),        # the label of request 0
    event(5, "2026-01-06 08:00:00.000001", "news"),     # a microsecond after: never a feature
    event(6, "2026-01-06 10:00:00", "mail"),            # later the same day
    event(7, "2026-01-07 07:00:00", "calendar", user="bob"),
    event(8, "2026-01-07 12:00:00", "maps"),            # the label of request 1
]


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    home = tmp_path_factory.mktemp("pit")
    settings = Settings(home=home, user_hash_secret=SECRET)
    spec = load_spec("next_app", settings.feature_repo)
    assert ingest_frame(pd.DataFrame(EVENTS), spec.event_log, settings.events_dir(spec.name),
                        SECRET).rows_written == 8
    compute_feature_tables(settings, spec)
    apply_repo(settings, spec.name)
    requests = pd.DataFrame([EVENTS[3], EVENTS[7]])
    requests["user_id"] = requests["user_id"].map(lambda u: hash_user_id(u, SECRET))
    requests.insert(0, REQUEST_ID, [0, 1])
    rows = build_ranking_set(open_store(settings, spec.name), requests, spec)
    return rows.set_index([REQUEST_ID, "app"])


def test_the_label_is_marked_on_its_candidate_only(joined: pd.DataFrame) -> None:
    labels = joined["label"]
    assert labels.loc[(1, "maps")] == 1
    assert labels.sum() == 1  # request 0's answer, calendar, was never seen before: no candidate


def test_event_level_features_stop_just_before_the_unlock(joined: pd.DataFrame) -> None:
    mail = joined.loc[(0, "mail")]
    # request 0 at 2026-01-06 08:00: the last unlock is day 1 09:30 (mail), 22.5 hours before
    assert mail["minutes_since_last_unlock"] == pytest.approx(22.5 * 60)
    assert mail["minutes_since_app_last_opened"] == pytest.approx(22.5 * 60)
    assert joined.loc[(0, "maps"), "minutes_since_app_last_opened"] == pytest.approx(23 * 60)
    # transitions are looked up from the last app before the unlock: mail (not calendar/news)
    assert set(joined.loc[0, "prev_app"]) == {"mail"}
    assert "news" not in joined.loc[0].index and "calendar" not in joined.loc[0].index


def test_daily_features_come_from_the_snapshot_before_the_label(joined: pd.DataFrame) -> None:
    # request 1 (2026-01-07 12:00) sees the 2026-01-07 00:00 snapshot: days 5 and 6 only
    mail = joined.loc[(1, "mail")]
    assert mail["opens_1d"] == 1  # the 10:00 mail of day 6; not later events
    assert mail["opens_7d"] == 3
    maps = joined.loc[(1, "maps")]
    assert maps["opens_7d"] == 1
    # the label event at 12:00 on day 7 (maps) is not counted anywhere
    assert maps["minutes_since_app_last_opened"] == pytest.approx(
        (pd.Timestamp("2026-01-07 12:00") - pd.Timestamp("2026-01-05 09:00")).total_seconds() / 60)
    # bob's event is not ann's
    assert joined.loc[(1, "calendar"), "opens_7d"] == 1  # ann's calendar on day 6 only


def test_nothing_stamped_after_a_request_is_in_its_row(joined: pd.DataFrame) -> None:
    assert (joined["minutes_since_app_last_opened"].dropna() > 0).all()
    assert (joined["minutes_since_last_unlock"].dropna() > 0).all()


def test_request_zero_sees_only_day_one(joined: pd.DataFrame) -> None:
    # the 2026-01-06 00:00 snapshot: day 5 had mail twice and maps once
    assert joined.loc[(0, "mail"), "opens_1d"] == 2
    assert joined.loc[(0, "maps"), "opens_1d"] == 1
    assert joined.loc[(0, "mail"), "app_share_28d"] == pytest.approx(2 / 3)


def test_transitions_use_the_last_app_and_past_pairs_only(joined: pd.DataFrame) -> None:
    # before request 1, ann's last app is mail (day 6 10:00); up to the day-7 snapshot she went
    # mail -> maps once (day 5) and mail -> calendar once (day 5 -> day 6)
    assert set(joined.loc[1, "prev_app"]) == {"mail"}
    assert joined.loc[(1, "maps"), "transitions_28d"] == 1
    assert joined.loc[(1, "maps"), "transition_share_28d"] == pytest.approx(0.5)
    assert math.isnan(joined.loc[(1, "news"), "transitions_28d"])  # never after mail
