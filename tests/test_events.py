"""Validation of raw events: every bad value is named with its row, field and reason."""

from __future__ import annotations

import pandas as pd
import pytest

from feastflow.events import decode_events, encode_events, event_columns, validate_events
from feastflow.settings import FEATURE_REPO
from feastflow.spec import ColumnSpec, EventLogSpec, load_spec

NOW = pd.Timestamp("2026-03-01T12:00:00Z")
CONTRACT = load_spec("next_app", FEATURE_REPO).event_log


def good_row(**overrides: object) -> dict[str, object]:
    row = {
        "event_id": "e1", "user_id": "alice", "timestamp": "2026-02-01T08:00:00Z",
        "app": "mail", "secs_since_prev_unlock": 30.0, "session_seconds": 12.5,
        "location": "home", "battery": 80, "charging": False, "network": "wifi",
        "os_version": "android-14",
    }
    row.update(overrides)
    return row


def errors_of(rows: list[dict[str, object]]) -> list[tuple[int, str]]:
    _, errors = validate_events(pd.DataFrame(rows), CONTRACT, now=NOW)
    return [(e.row, e.field) for e in errors]


def test_clean_rows_are_typed_as_the_schema_says() -> None:
    clean, errors = validate_events(pd.DataFrame([good_row()]), CONTRACT, now=NOW)
    assert errors == []
    assert list(clean.columns) == event_columns(CONTRACT)
    assert str(clean["timestamp"].dtype) == "datetime64[us, UTC]"
    assert clean.loc[0, "charging"] is False or clean.loc[0, "charging"] == False  # noqa: E712
    assert clean["battery"].dtype == "int64"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timestamp", "yesterday-ish"),
        ("timestamp", "2026-03-05T00:00:00Z"),  # > 5 minutes in the future
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
    clean, errors = validate_events(pd.DataFrame(rows), CONTRACT, now=NOW)
    assert clean.empty
    assert [(e.row, e.field) for e in errors] == [(0, "colour")]
    frame = pd.DataFrame([good_row()]).drop(columns=["app"])
    clean, errors = validate_events(frame, CONTRACT, now=NOW)
    assert clean.empty and [e.field for e in errors] == ["app"]
    assert "required field is missing" in errors[0].reason


def test_offsets_are_converted_to_utc() -> None:
    rows = [good_row(timestamp="2026-02-01 08:00:00Z"),
            good_row(event_id="e2", timestamp="2026-02-01T10:00:00+02:00"),
            good_row(event_id="e3", timestamp="2026-02-01T03:00-0500"),
            good_row(event_id="e4", timestamp=pd.Timestamp("2026-02-01T09:00:00+01:00"))]
    clean, errors = validate_events(pd.DataFrame(rows), CONTRACT, now=NOW)
    assert errors == []
    assert (clean["timestamp"] == pd.Timestamp("2026-02-01T08:00:00Z")).all()


# --- strict types, zones, time bounds, string lengths (issue 14, item 8) ------------------------

ISO = "ISO 8601 with a time zone required, got "


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        # an integer was read as nanoseconds since 1970; words and local formats were guessed
        ("timestamp", 1_772_352_000_000_000_000, "must be an ISO 8601 string with a time zone, "
                                                 "got a number"),
        ("timestamp", "now", ISO + '"now"'),
        ("timestamp", "today", ISO + '"today"'),
        ("timestamp", "02/03/2026", ISO + '"02/03/2026"'),
        ("timestamp", "2026-02-01T08:00:00", ISO + '"2026-02-01T08:00:00"'),  # naive
        ("timestamp", "2026-02-30T08:00:00Z", 'not a valid date and time, got '
                                              '"2026-02-30T08:00:00Z"'),
        ("timestamp", pd.Timestamp("2026-02-01T08:00:00"),
         "a time zone is required, got a datetime without one"),
        ("timestamp", "1900-01-01T00:00:00Z", "before 2020-01-01T00:00:00Z, the earliest time "
                                              "this use case accepts"),
        ("timestamp", "1970-01-01T00:00:00Z", "before 2020-01-01T00:00:00Z, the earliest time "
                                              "this use case accepts"),
        ("timestamp", "2026-03-01T12:05:01Z", "more than 5 minutes in the future"),
        ("timestamp", "2999-01-01T00:00:00Z", "more than 5 minutes in the future"),  # > 2262
        ("timestamp", "1000-01-01T00:00:00Z", "before 2020-01-01T00:00:00Z, the earliest time "
                                              "this use case accepts"),  # < 1677
        ("timestamp", "x" * 30_000, ISO + '"' + "x" * 40 + '..."'),
        ("event_id", {"id": 7}, "must be a string, got an object"),
        ("event_id", ["e9"], "must be a string, got an array"),
        ("event_id", 9, "must be a string, got a number"),
        ("user_id", True, "must be a string, got a boolean"),
        ("os_version", "x" * 30_000, "longer than 32 characters"),
        ("user_id", "u" * 129, "longer than 128 characters"),
        ("battery", True, "must be a number, got a boolean"),
        ("battery", "80", "must be a number, got a string"),
        ("secs_since_prev_unlock", "inf", "must be a number, got a string"),
        ("secs_since_prev_unlock", float("inf"), "must be a finite number"),
        ("session_seconds", float("-inf"), "must be a finite number"),
        ("charging", "yes", "must be true or false, got a string"),
        ("charging", "false", "must be true or false, got a string"),
        ("charging", 1, "must be true or false, got a number"),
    ],
)
def test_values_are_never_coerced_and_times_are_bounded(field: str, value: object, reason: str
                                                        ) -> None:
    rows = [good_row(), good_row(**{"event_id": "e2", field: value})]
    _, errors = validate_events(pd.DataFrame(rows), CONTRACT, now=NOW)
    assert [(e.row, e.field, e.reason) for e in errors] == [(2, field, reason)]


def test_the_bounds_themselves_are_accepted() -> None:
    rows = [good_row(timestamp="2020-01-01T00:00:00Z"),
            good_row(event_id="e2", timestamp="2026-03-01T12:05:00Z"),  # NOW + max_future
            good_row(event_id="e3", user_id="u" * 128, battery=80.0)]  # a whole float is a number
    clean, errors = validate_events(pd.DataFrame(rows), CONTRACT, now=NOW)
    assert errors == [] and len(clean) == 3


def test_text_input_parses_numbers_and_flags_but_not_words() -> None:
    rows = [good_row(battery="80", secs_since_prev_unlock=" 30.5 ", session_seconds="12",
                     charging="True"),
            good_row(event_id="e2", charging="0", secs_since_prev_unlock=""),
            good_row(event_id="e3", charging="yes"),
            good_row(event_id="e4", battery="inf"),
            good_row(event_id="e5", timestamp="2026-02-01 08:00:00")]
    clean, errors = validate_events(pd.DataFrame(rows), CONTRACT, now=NOW, text=True)
    assert [(e.row, e.field, e.reason) for e in errors] == [
        (3, "charging", "must be true or false"),
        (4, "battery", "must be a finite number"),
        (5, "timestamp", ISO + '"2026-02-01 08:00:00"')]
    assert clean["charging"].tolist() == [True, False] and clean["battery"].tolist() == [80, 80]
    assert clean["secs_since_prev_unlock"].isna().tolist() == [False, True]


def test_the_contract_declares_its_bounds_and_lengths() -> None:
    contract = EventLogSpec.model_validate({
        **ORDER_CONTRACT.model_dump(exclude={"earliest", "max_future", "columns"}),
        "earliest": "2026-01-15", "max_future": "1h",
        "columns": {**ORDER_CONTRACT.columns,
                    "shop": ColumnSpec(type="string", max_length=4)}})
    assert contract.earliest == pd.Timestamp("2026-01-15T00:00:00Z")
    rows = [order(), order(order_id="o2", placed_at="2026-01-14T23:59:59Z"),
            order(order_id="o3", placed_at="2026-03-01T13:00:01Z"),
            order(order_id="o4", placed_at="2026-03-01T13:00:00Z"),
            order(order_id="o5", shop="s1234")]
    _, errors = validate_events(pd.DataFrame(rows), contract, now=NOW)
    assert [(e.row, e.field, e.reason) for e in errors] == [
        (2, "placed_at", "before 2026-01-15T00:00:00Z, the earliest time this use case accepts"),
        (3, "placed_at", "more than one hour in the future"),
        (5, "shop", "longer than 4 characters")]
    with pytest.raises(ValueError, match="has no time zone"):
        EventLogSpec.model_validate({**contract.model_dump(), "earliest": "2026-01-15T00:00:00"})
    with pytest.raises(ValueError, match="max_length applies to string columns"):
        ColumnSpec(type="int", max_length=3)


# --- any contract: the rules come from the declaration, not from one use case ------------------

ORDER_CONTRACT = EventLogSpec(
    event_id="order_id", entity="shop", timestamp="placed_at", label="returned",
    context=["basket_eur", "gift", "channel"],
    columns={
        "order_id": ColumnSpec(type="string"),
        "shop": ColumnSpec(type="string", pattern=r"^s\d+$", pattern_hint="s followed by digits"),
        "placed_at": ColumnSpec(type="timestamp"),
        "basket_eur": ColumnSpec(type="float", min=0.5),
        "items": ColumnSpec(type="int", min=1, max=50, nullable=True),
        "gift": ColumnSpec(type="bool", nullable=True),
        "channel": ColumnSpec(type="string", allowed=["web", "app"]),
        "returned": ColumnSpec(type="int", allowed=[0, 1]),
    })


def order(**overrides: object) -> dict[str, object]:
    row = {"order_id": "o1", "shop": "s12", "placed_at": "2026-02-01T10:00:00Z",
           "basket_eur": 19.9, "items": 2, "gift": True, "channel": "web", "returned": 0}
    row.update(overrides)
    return row


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("shop", "shop-12", "must be s followed by digits"),
        ("basket_eur", 0.1, "out of range [0.5, inf]"),
        ("items", 51, "out of range [1, 50]"),
        ("items", 2.5, "must be a whole number"),
        ("gift", "perhaps", "must be true or false, got a string"),
        ("channel", "phone", "must be one of web, app"),
        ("returned", 2, "must be one of 0, 1"),
        ("placed_at", "2026-03-09T00:00:00Z", "more than 5 minutes in the future"),
        ("shop", "", "required value is empty"),
    ],
)
def test_any_contract_names_the_row_field_and_reason(field: str, value: object, reason: str
                                                     ) -> None:
    _, errors = validate_events(pd.DataFrame([order(), order(order_id="o2", **{field: value})]),
                                ORDER_CONTRACT, now=NOW)
    assert [(e.row, e.field, e.reason) for e in errors] == [(2, field, reason)]


def test_nullable_columns_may_be_empty_or_absent_and_types_follow_the_contract() -> None:
    rows = [order(), order(order_id="o2", items=None, gift=None)]
    clean, errors = validate_events(pd.DataFrame(rows), ORDER_CONTRACT, now=NOW)
    assert errors == []
    assert str(clean["items"].dtype) == "Int64" and clean["items"].isna().tolist() == [False, True]
    assert str(clean["gift"].dtype) == "boolean" and clean.loc[0, "gift"]
    assert str(clean["placed_at"].dtype) == "datetime64[us, UTC]"
    absent = pd.DataFrame([order()]).drop(columns=["items", "gift"])
    clean, errors = validate_events(absent, ORDER_CONTRACT, now=NOW)
    assert errors == [] and clean["items"].isna().all()
    clean, errors = validate_events(pd.DataFrame([order()]).drop(columns=["returned"]),
                                    ORDER_CONTRACT, now=NOW)
    assert clean.empty and [(e.field, e.reason) for e in errors] == [
        ("returned", "required field is missing from the input")]


def test_stream_payloads_round_trip_any_contract() -> None:
    rows = [order(), order(order_id="o2", items=None, gift=None, placed_at="2026-02-01 11:00Z")]
    clean, _ = validate_events(pd.DataFrame(rows), ORDER_CONTRACT, now=NOW)
    encoded = encode_events(clean, ORDER_CONTRACT)
    assert [event_id for event_id, _ in encoded] == ["o1", "o2"]
    decoded = decode_events([payload for _, payload in encoded], ORDER_CONTRACT)
    pd.testing.assert_frame_equal(decoded, clean)
