"""The HTTP contract: every invalid request is a 4xx naming the field; no model is a 503."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from feastflow.privacy import hash_user_id
from serving.app import create_app
from serving.deps import get_predictor
from serving.predictor import Prediction
from serving.settings import ServingSettings

GOOD = {"user_id": "alice", "timestamp": "2026-03-02T08:05:00Z",
        "context": {"location": "home", "battery": 80, "charging": False, "network": "wifi",
                    "secs_since_prev_unlock": 30}}


class FakeModel:
    version = "7"


class FakePredictor:
    """Records what it was asked and answers a fixed ranking."""

    def __init__(self) -> None:
        self.model = FakeModel()
        self.calls: list[tuple[str, datetime, dict[str, Any], int]] = []

    def predict(self, user_hash: str, timestamp: datetime, context: dict[str, Any], k: int
                ) -> Prediction:
        self.calls.append((user_hash, timestamp, context, k))
        return Prediction([("mail", 0.9), ("maps", 0.5)][:k], known_user=True, fallback=None)


@pytest.fixture(scope="module")
def fake() -> FakePredictor:
    return FakePredictor()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, fake: FakePredictor) -> Iterator[TestClient]:
    settings = ServingSettings(home=tmp_path_factory.mktemp("api"), user_hash_secret="api-secret")
    app = create_app(settings)
    app.dependency_overrides[get_predictor] = lambda: fake
    with TestClient(app) as c:
        yield c


def test_a_valid_request_is_scored_with_the_hashed_user(client: TestClient,
                                                        fake: FakePredictor) -> None:
    response = client.post("/v1/predict", json={**GOOD, "k": 1})
    assert response.status_code == 200
    body = response.json()
    assert body["apps"] == [{"app": "mail", "score": 0.9}]
    assert body["model_version"] == "7" and body["known_user"] is True
    assert body["latency_ms"] >= 0
    user_hash, ts, context, k = fake.calls[-1]
    assert user_hash == hash_user_id("alice", "api-secret") and k == 1
    assert ts.tzinfo is not None and context["location"] == "home"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"user_id": ""}, "user_id"),
        ({"timestamp": "not a time"}, "timestamp"),
        ({"k": 0}, "k"),
        ({"k": 99}, "k"),
        ({"colour": "red"}, "colour"),
        ({"context": {**GOOD["context"], "battery": 101}}, "battery"),
        ({"context": {**GOOD["context"], "location": "moon"}}, "location"),
        ({"context": {**GOOD["context"], "network": "5g"}}, "network"),
        ({"context": {**GOOD["context"], "secs_since_prev_unlock": -1}}, "secs_since_prev_unlock"),
        ({"context": {"location": "home"}}, "battery"),
    ],
)
def test_invalid_requests_get_422_naming_the_field(client: TestClient, patch: dict[str, Any],
                                                   field: str) -> None:
    response = client.post("/v1/predict", json={**GOOD, **patch})
    assert response.status_code == 422
    locations = [err["loc"][-1] for err in response.json()["detail"]]
    assert field in locations


def test_a_body_that_is_not_json_is_a_4xx(client: TestClient) -> None:
    response = client.post("/v1/predict", content=b"{not json",
                           headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_no_model_means_503_and_healthz_says_so(tmp_path: Path) -> None:
    app = create_app(ServingSettings(home=tmp_path))
    with TestClient(app) as c:
        assert c.get("/healthz").json() == {"status": "ok", "model_version": None}
        response = c.post("/v1/predict", json=GOOD)
        assert response.status_code == 503
        assert "train and promote first" in response.json()["detail"]
