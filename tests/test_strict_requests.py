"""Prediction requests follow the event contract's rules (issue 14, item 8): no coercion, a zone
on the time, the contract's earliest time, each string's max_length; errors name the field."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from feastflow.settings import FEATURE_REPO
from feastflow.spec import load_spec
from serving.schemas import RequestError, decode, request_type

NEXT_APP = load_spec("next_app", FEATURE_REPO)
TAXI = load_spec("taxi_eta", FEATURE_REPO)
GOOD: dict[str, Any] = {
    "user_id": "alice", "timestamp": "2026-03-02T08:05:00Z",
    "context": {"location": "home", "battery": 80, "charging": False, "network": "wifi",
                "secs_since_prev_unlock": 30}}
TRIP: dict[str, Any] = {
    "pickup_community_area": 8, "timestamp": "2017-01-02T18:00:00Z",
    "context": {"dropoff_community_area": 32, "pickup_latitude": 41.9, "pickup_longitude": -87.6,
                "dropoff_latitude": 41.88, "dropoff_longitude": -87.63, "company": "Flash Cab"}}


def refused(spec: Any, body: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(RequestError) as caught:
        decode(orjson.dumps(body), request_type(spec))
    [error] = caught.value.detail
    return error


def with_context(**patch: Any) -> dict[str, Any]:
    return {**GOOD, "context": {**GOOD["context"], **patch}}


@pytest.mark.parametrize(("body", "loc", "msg"), [
    ({**GOOD, "timestamp": "2026-03-02T08:05:00"}, ["body", "timestamp"],
     "Expected `datetime` with a timezone component"),
    ({**GOOD, "timestamp": 1_772_438_700}, ["body", "timestamp"], "Expected `datetime`, got `int`"),
    ({**GOOD, "timestamp": "now"}, ["body", "timestamp"], "Invalid RFC3339 encoded datetime"),
    ({**GOOD, "timestamp": "1900-01-01T00:00:00Z"}, ["body", "timestamp"],
     "before 2020-01-01T00:00:00Z, the earliest time this use case accepts"),
    ({**GOOD, "user_id": {"id": 1}}, ["body", "user_id"], "Expected `str`, got `object`"),
    ({**GOOD, "user_id": "u" * 129}, ["body", "user_id"], "Expected `str` of length <= 128"),
    (with_context(battery=True), ["body", "context", "battery"], "Expected `int`, got `bool`"),
    (with_context(battery="80"), ["body", "context", "battery"], "Expected `int`, got `str`"),
    (with_context(charging="yes"), ["body", "context", "charging"], "Expected `bool`, got `str`"),
    (with_context(charging=1), ["body", "context", "charging"], "Expected `bool`, got `int`"),
    (with_context(secs_since_prev_unlock="inf"), ["body", "context", "secs_since_prev_unlock"],
     "Expected `float | null`, got `str`"),
])
def test_next_app_requests_are_strict(body: dict[str, Any], loc: list[Any], msg: str) -> None:
    error = refused(NEXT_APP, body)
    assert error["loc"] == loc
    assert error["msg"].startswith(msg)


def test_every_string_of_the_context_has_its_length_limit() -> None:
    error = refused(TAXI, {**TRIP, "context": {**TRIP["context"], "company": "c" * 129}})
    assert error["loc"] == ["body", "context", "company"]
    assert error["msg"].startswith("Expected `str` of length <= 128")
    error = refused(TAXI, {**TRIP, "timestamp": "2012-12-31T23:59:59Z"})
    assert error["msg"] == "before 2013-01-01T00:00:00Z, the earliest time this use case accepts"


def test_valid_requests_still_decode() -> None:
    request = decode(orjson.dumps({**GOOD, "timestamp": "2026-03-02T10:05:00+02:00"}),
                     request_type(NEXT_APP))
    assert request.timestamp.utcoffset() is not None
    trip = decode(orjson.dumps({**TRIP, "context": {**TRIP["context"], "company": "c" * 128}}),
                  request_type(TAXI))
    assert trip.context.company == "c" * 128
