"""POST /v1/events over a real socket: the documented batch fits the body limit (issue 14, item 9).

The body limit was 64 KiB for every route while a batch may hold 500 events: 250 real events got
413. The events routes now take `max_events_per_request` x `max_event_bytes` (+ commas and the
envelope), and every shipped contract's largest valid event fits `max_event_bytes`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd
import pytest
from test_serving_integration import running

from feastflow.events import largest_event_bytes, validate_events
from feastflow.settings import FEATURE_REPO
from feastflow.spec import load_spec, use_cases
from feastflow.stream import open_event_stream
from feature_repo.next_app.world import generate_events
from serving.settings import ServingSettings

KEY = "limits-key"
WIDE = "\U0001f600"  # 4 bytes in UTF-8: the widest character


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> ServingSettings:
    """An empty home on the Redis profile: events go to a real Redis Stream."""
    return ServingSettings(home=tmp_path_factory.mktemp("limits"), profile="redis",
                           redis_url=redis_url, user_hash_secret="limits-secret", api_key=KEY,
                           registry_poll_seconds=0, log_json=False)


@pytest.fixture(scope="module")
def client(settings: ServingSettings) -> Iterator[httpx.Client]:
    with running(settings, start_timeout_s=120, timeout_s=120, headers={"x-api-key": KEY}) as c:
        yield c


def realistic(n: int, prefix: str) -> list[dict[str, Any]]:
    """n events of the simulated world as a client sends them (JSON values, zoned ISO times)."""
    raw = generate_events(users=20, days=14, seed=4).head(n)
    frame = raw.assign(timestamp=raw["timestamp"].map(lambda t: t.isoformat()),
                       event_id=prefix + raw["event_id"])
    return [{k: v for k, v in row.items() if not (isinstance(v, float) and v != v)}
            for row in frame.to_dict("records")]


def largest(i: int, prefix: str) -> dict[str, Any]:
    """A valid next_app event as large as its contract allows: every string at its length limit
    in 4-byte characters, the longest zoned time, the longest numbers."""
    tag = f"{prefix}{i:05d}"
    return {"event_id": WIDE * (128 - len(tag)) + tag, "user_id": WIDE * 128,
            "timestamp": "2026-01-05T08:00:00.123456789+00:00", "app": "a" * 64,
            "secs_since_prev_unlock": 1.2345678901234567e-300,
            "session_seconds": 1.2345678901234567, "location": "commute", "battery": 100,
            "charging": False, "network": "cellular", "os_version": WIDE * 32}


def body_of(events: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"events": events})


def backlog(settings: ServingSettings) -> int:
    return open_event_stream(settings, "next_app").backlog()


@pytest.mark.parametrize("use_case", use_cases(FEATURE_REPO))
def test_each_contracts_largest_event_fits_the_per_event_budget(use_case: str) -> None:
    contract = load_spec(use_case, FEATURE_REPO).event_log
    assert largest_event_bytes(contract) <= ServingSettings().max_event_bytes


def test_the_largest_event_is_valid_and_as_large_as_computed() -> None:
    contract = load_spec("next_app", FEATURE_REPO).event_log
    event = largest(0, "x")
    clean, errors = validate_events(pd.DataFrame([event]), contract)
    assert errors == [] and len(clean) == 1
    size = len(orjson.dumps(event))
    # the bound is tight but for what the contract narrows further: app's pattern (ASCII only,
    # 192 bytes), the ASCII tag of the id (18) and numbers shorter than their longest (24)
    assert largest_event_bytes(contract) - 240 < size <= largest_event_bytes(contract)


@pytest.mark.redis
def test_a_full_batch_of_realistic_events_is_accepted(client: httpx.Client,
                                                      settings: ServingSettings) -> None:
    events = realistic(settings.max_events_per_request, "real-")
    body = body_of(events)
    assert len(body) > 64 * 1024  # the old limit refused it
    before = backlog(settings)
    response = client.post("/v1/events", content=body)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 500, "duplicates": 0, "rejected": []}
    assert backlog(settings) == before + 500


@pytest.mark.redis
def test_a_full_batch_of_the_largest_events_is_accepted(client: httpx.Client,
                                                        settings: ServingSettings) -> None:
    events = [largest(i, "big-") for i in range(settings.max_events_per_request)]
    body = body_of(events)
    assert len(body) <= settings.max_events_body_bytes
    response = client.post("/v1/events", content=body)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 500


@pytest.mark.redis
def test_one_event_over_the_batch_is_refused_and_nothing_is_accepted(
        client: httpx.Client, settings: ServingSettings) -> None:
    before = backlog(settings)
    response = client.post("/v1/events", content=body_of(realistic(501, "over-")))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "events"]
    assert error["msg"] == "at most 500 events per request, got 501: send smaller batches"
    assert backlog(settings) == before


@pytest.mark.redis
@pytest.mark.parametrize("announced", [True, False])
def test_a_body_over_the_events_limit_is_a_413_that_explains_it(
        client: httpx.Client, settings: ServingSettings, announced: bool) -> None:
    events = [largest(i, "pad-") for i in range(settings.max_events_per_request)]
    body = body_of(events)
    body = body[:-2] + b" " * (settings.max_events_body_bytes - len(body) + 1) + body[-2:]
    assert len(body) == settings.max_events_body_bytes + 1
    before = backlog(settings)
    if announced:
        response = client.post("/v1/events", content=body)
    else:  # streamed in chunks without a content-length
        response = client.post("/v1/events", content=iter([body[:300_000], body[300_000:]]))
        assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json()["detail"] == (
        f"request body larger than {settings.max_events_body_bytes} bytes (at most 500 events "
        "of at most 2048 bytes each as compact JSON: send smaller batches)")
    assert backlog(settings) == before


@pytest.mark.redis
def test_other_routes_keep_their_own_smaller_limit(client: httpx.Client,
                                                   settings: ServingSettings) -> None:
    response = client.post("/v1/predict", content=b" " * (settings.max_body_bytes + 1),
                           headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["detail"] == f"request body larger than {settings.max_body_bytes} bytes"


def test_the_limits_are_derived_from_one_another(tmp_path: Path) -> None:
    s = ServingSettings(home=tmp_path, max_events_per_request=10, max_event_bytes=300)
    assert s.max_events_body_bytes == 10 * 301 + 64


@pytest.mark.redis
def test_the_bad_values_of_the_issue_are_refused_each_naming_field_and_problem(
        client: httpx.Client, settings: ServingSettings) -> None:
    """Item 8 over the socket: each was accepted (and some logged at 1970 or 1900) before."""
    good = realistic(1, "strict-")[0]
    bad: list[tuple[str, Any, str]] = [
        ("timestamp", 1_772_352_000_000_000_000,
         "must be an ISO 8601 string with a time zone, got a number"),
        ("timestamp", "now", 'ISO 8601 with a time zone required, got "now"'),
        ("timestamp", "today", 'ISO 8601 with a time zone required, got "today"'),
        ("timestamp", "02/03/2026", 'ISO 8601 with a time zone required, got "02/03/2026"'),
        ("timestamp", "1900-01-01T00:00:00Z",
         "before 2020-01-01T00:00:00Z, the earliest time this use case accepts"),
        ("timestamp", "2999-01-01T00:00:00Z", "more than 5 minutes in the future"),
        ("event_id", {"id": 1}, "must be a string, got an object"),
        ("secs_since_prev_unlock", "inf", "must be a number, got a string"),
        ("user_id", "u" * 30_000, "longer than 128 characters"),
        ("battery", True, "must be a number, got a boolean"),
        ("charging", "yes", "must be true or false, got a string"),
    ]
    events = [good] + [{**good, "event_id": f"strict-bad-{i}", field: value}
                       for i, (field, value, _) in enumerate(bad)]
    before = backlog(settings)
    response = client.post("/v1/events", content=body_of(events))
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["accepted"] == 1
    assert [(e["loc"], e["msg"]) for e in answer["rejected"]] == [
        (["body", "events", i + 1, field], msg) for i, (field, _, msg) in enumerate(bad)]
    assert backlog(settings) == before + 1
