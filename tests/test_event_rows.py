"""POST /v1/events' per-event checker agrees with `validate_events` on any batch of JSON events:
the same errors (row, field, reason) and the same stream payloads for the good events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_events import ORDER_CONTRACT as ORDERS

from feastflow.event_log import hash_columns
from feastflow.event_rows import JsonEventChecker
from feastflow.events import encode_events, event_columns, validate_events
from feastflow.settings import FEATURE_REPO
from feastflow.spec import ColumnSpec, EventLogSpec, load_spec

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET = "rows-secret"
# every kind of rule in one contract: nullable, pattern, allowed, max_length, min/max
ORDER_CONTRACT = EventLogSpec.model_validate({
    **ORDERS.model_dump(exclude={"columns"}),
    "columns": {**ORDERS.columns, "order_id": ColumnSpec(type="string", max_length=8),
                "note": ColumnSpec(type="string", nullable=True, max_length=4)}})
CONTRACTS = {"orders": ORDER_CONTRACT,
             **{name: load_spec(name, FEATURE_REPO).event_log
                for name in ("next_app", "credit_score", "taxi_eta", "fraud")}}

MISSING = object()  # the key is left out of the event
OTHER_KINDS = st.one_of(st.none(), st.just(MISSING), st.booleans(), st.integers(-5, 5),
                        st.floats(-5, 5), st.just(""), st.just("  "), st.text(max_size=3),
                        st.just({"a": 1}), st.just([1]))
TIMES = st.datetimes(min_value=datetime(1600, 1, 1), max_value=datetime(2300, 1, 1),
                     timezones=st.sampled_from([UTC, None]))
TIME_FORMATS = ["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M%z", "%Y-%m-%dT%H:%M:%S.%f%z",
                "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S", "%d/%m/%Y"]


def timestamps() -> st.SearchStrategy[Any]:
    near = st.integers(-10**6, 400).map(lambda s: (NOW + pd.Timedelta(seconds=s)).isoformat())
    formatted = st.builds(lambda t, f: t.strftime(f), TIMES, st.sampled_from(TIME_FORMATS))
    odd = st.sampled_from(["2026-02-30T08:00:00Z", "2026-02-01T08:00:00.123456789+05:30",
                           " 2026-02-01T08:00:00+0100 ", "2026-02-01T08:00+05",
                           "2019-12-31T23:59:59Z", "2020-01-01T00:00:00Z", "now"])
    return st.one_of(near, formatted, odd, OTHER_KINDS)


def values(column: ColumnSpec) -> st.SearchStrategy[Any]:
    """Good values of the column mixed with every kind of bad one."""
    if column.type == "timestamp":
        return timestamps()
    if column.type == "bool":
        good: st.SearchStrategy[Any] = st.booleans()
    elif column.type in ("int", "float"):
        low = -1e6 if column.min is None else column.min - 2
        high = 1e6 if column.max is None else column.max + 2
        numbers = [st.integers(int(low), int(high))]
        if column.allowed is not None:
            numbers.append(st.sampled_from(column.allowed))
        good = st.one_of(*numbers, st.floats(low, high), st.integers(int(low), int(high))
                         .map(float), st.just(float("inf")))
    elif column.allowed is not None:
        good = st.sampled_from([*column.allowed, f" {column.allowed[0]} ", "nope"])
    elif column.pattern is not None:
        good = st.one_of(st.from_regex(column.pattern, fullmatch=True).map(lambda s: s[:20]),
                         st.text(min_size=1, max_size=6))
    else:
        limit = column.length_limit
        good = st.one_of(st.text(min_size=1, max_size=6), st.just("x" * limit),
                         st.just("y" * (limit + 1)), st.text(max_size=4).map(lambda s: f" {s} "))
    return st.one_of(good, good, OTHER_KINDS)


def plain(draw: st.DrawFn, column: ColumnSpec) -> Any:
    """A good value of the column."""
    if column.allowed is not None:
        return column.allowed[0]
    if column.pattern is not None:
        return draw(st.from_regex(column.pattern, fullmatch=True).filter(
            lambda s: s.strip() == s and 0 < len(s) <= column.length_limit))
    if column.type in ("int", "float"):
        low, high = column.min, column.max
        middle = ((low + high) / 2 if low is not None and high is not None
                  else low + 1 if low is not None else high - 1 if high is not None else 1.5)
        return int(middle) if column.type == "int" else middle
    return {"string": "ok", "bool": True, "timestamp": "2026-02-01T10:00:00+01:00"}[column.type]


@st.composite
def batches(draw: st.DrawFn, contract: EventLogSpec) -> list[dict[str, Any]]:
    """Events whose columns are good values, but one (or, now and then, each) drawn from
    anything; event ids from a small pool, so that duplicates happen."""
    size = draw(st.integers(1, 8))
    names = list(contract.columns)
    events = []
    for _ in range(size):
        event = {}
        wild = draw(st.sampled_from([None, "all", *names]))
        for name, column in contract.columns.items():
            value = (draw(st.sampled_from(["e1", "e2", " e1", "e3", "e4", "e5"]))
                     if name == contract.event_id and draw(st.booleans())
                     else draw(values(column)) if wild in ("all", name)
                     else plain(draw, column))
            if value is not MISSING:
                event[name] = value
        events.append(event)
    return events


def by_frame(events: list[dict[str, Any]], contract: EventLogSpec
             ) -> tuple[list[tuple[int, str, str]], list[tuple[str, bytes]]]:
    frame = pd.DataFrame(events, columns=event_columns(contract))
    clean, errors = validate_events(frame, contract, now=pd.Timestamp(NOW))
    hashed = hash_columns(clean, SECRET, contract.hashed_columns)
    payloads = encode_events(hashed, contract) if len(clean) else []
    return [(e.row, e.field, e.reason) for e in errors], payloads


def by_rows(events: list[dict[str, Any]], contract: EventLogSpec
            ) -> tuple[list[tuple[int, str, str]], list[tuple[str, bytes]]]:
    checker = JsonEventChecker(contract)
    good, errors = checker.check(events, now=NOW)
    return ([(e.row, e.field, e.reason) for e in errors],
            [checker.encode(values, SECRET) for _, values in good])


@pytest.mark.parametrize("name", sorted(CONTRACTS))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_checker_gives_what_validate_events_gives(name: str, data: st.DataObject) -> None:
    contract = CONTRACTS[name]
    events = data.draw(batches(contract))
    assert by_rows(events, contract) == by_frame(events, contract)


def test_a_bad_event_still_makes_a_later_copy_of_its_id_a_duplicate() -> None:
    good = {"order_id": "o1", "shop": "s1", "placed_at": "2026-02-01T10:00:00Z",
            "basket_eur": 19.9, "items": 2, "gift": True, "channel": "web", "returned": 0}
    events = [{**good, "basket_eur": 0.1}, {**good, "order_id": " o1 "}, {**good, "order_id": "o2"}]
    errors, payloads = by_rows(events, ORDER_CONTRACT)
    assert errors == [(1, "basket_eur", "out of range [0.5, inf]"),
                      (2, "order_id", "duplicate order_id within the input")]
    assert [event_id for event_id, _ in payloads] == ["o2"]
    assert (errors, payloads) == by_frame(events, ORDER_CONTRACT)
