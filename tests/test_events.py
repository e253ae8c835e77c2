"""Validation of raw events: every bad value is named with its row, field and reason."""

from __future__ import annotations

import pandas as pd
import pytest

from feastflow.events import EVENT_COLUMNS, validate_events

NOW = pd.Timestamp("2026-03-01T12:00:00Z")


def good_row(**overrides: object) -> dict[str, object]:
    row = {
        "event_id": "e1", "user_id": "alice", "timestamp": "2026-02-01T08:00:00Z",
        "app": "mail", "secs_since_prev_unlock": 30.0, "session_seconds": 12.5,
        "location": "home", "battery": 80, "charging": "false", "network": "wifi",
        "os_version": "android-14",
    }
    row.update(overrides)
    return row


def errors_of(rows: list[dict[str, object]]) -> list[tuple[int, str]]:
    _, errors = validate_events(pd.DataFrame(rows), now=NOW)
    return [(e.row, e.field) for e in errors]


def test_clean_rows_are_typed_as_the_schema_says() -> None:
    clean, errors = validate_events(pd.DataFrame([good_row()]), now=NOW)
    assert errors == []
    assert list(clean.columns) == EVENT_COLUMNS
    assert str(clean["timestamp"].dtype) == "datetime64[us, UTC]"
    assert clean.loc[0, "charging"] is False or clean.loc[0, "charging"] == False  # noqa: E712
    assert clean["battery"].dtype == "int64"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timestamp", "yesterday-ish"),
        ("timestamp", "2026-03-05T00:00:00Z"),  # > 1 day in the future
        ("app", "Mail App!"),
        ("app", ""),
        ("location", "moon"),
        ("network", "5g"),
        ("battery", 101),
        ("battery", -1),
        ("battery", 50.5),
        ("battery", "full"),
        ("session_seconds", -3),
        ("session_seconds", 90000),
        ("secs_since_prev_unlock", -1),
        ("charging", "maybe"),
        ("user_id", None),
        ("event_id", " "),
    ],
)
def test_each_bad_value_is_reported_with_row_and_field(field: str, value: object) -> None:
    rows = [good_row(), good_row(**{"event_id": "e2", field: value})]
    assert errors_of(rows) == [(2, field)]


def test_optional_gap_may_be_empty() -> None:
    assert errors_of([good_row(secs_since_prev_unlock=None)]) == []


def test_duplicate_event_ids_keep_the_first() -> None:
    assert errors_of([good_row(), good_row(app="maps")]) == [(2, "event_id")]


def test_unknown_and_missing_fields_reject_the_input() -> None:
    rows = [good_row(colour="red")]
    clean, errors = validate_events(pd.DataFrame(rows), now=NOW)
    assert clean.empty
    assert [(e.row, e.field) for e in errors] == [(0, "colour")]
    frame = pd.DataFrame([good_row()]).drop(columns=["app"])
    clean, errors = validate_events(frame, now=NOW)
    assert clean.empty and [e.field for e in errors] == ["app"]
    assert "required field is missing" in errors[0].reason


def test_naive_timestamps_are_utc_and_offsets_are_converted() -> None:
    rows = [good_row(timestamp="2026-02-01 08:00:00"),
            good_row(event_id="e2", timestamp="2026-02-01T10:00:00+02:00")]
    clean, errors = validate_events(pd.DataFrame(rows), now=NOW)
    assert errors == []
    assert (clean["timestamp"] == pd.Timestamp("2026-02-01T08:00:00Z")).all()
