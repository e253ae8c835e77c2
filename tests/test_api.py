"""The HTTP contract of the prediction server, on an empty home (no feature store, no model).

A valid request always gets an answer (the static default here), never a 5xx; an invalid one is a
422 naming the field; a body too large is a 413; admin endpoints need the API key; every response
carries a request id.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from feastflow.spec import load_spec
from serving.app import create_app
from serving.settings import ServingSettings

GOOD: dict[str, Any] = {
    "user_id": "alice", "timestamp": "2026-03-02T08:05:00Z",
    "context": {"location": "home", "battery": 80, "charging": False, "network": "wifi",
                "secs_since_prev_unlock": 30}}
KEY = "k"
AUTH = {"x-api-key": KEY}
ADMIN = ["/admin/reload", "/admin/cache/flush"]


def make_settings(home: Any, **overrides: Any) -> ServingSettings:
    values: dict[str, Any] = {"user_hash_secret": "api-secret", "api_key": KEY,
                              "registry_poll_seconds": 0, "log_json": False}
    return ServingSettings(home=home, **{**values, **overrides})


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> ServingSettings:
    return make_settings(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def client(settings: ServingSettings) -> Iterator[TestClient]:
    # raise_server_exceptions=False: a server error must show up as the 500 a client would get.
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def static_default(settings: ServingSettings) -> list[str]:
    return list(load_spec(settings.use_case, settings.feature_repo).candidates.static_default)


# --- predict: valid requests ------------------------------------------------------------------


def test_a_valid_request_gets_the_static_default_without_a_model(client: TestClient,
                                                                 static_default: list[str]) -> None:
    response = client.post("/v1/predict", json=GOOD)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert [a["app"] for a in body["apps"]] == static_default[:4]  # k defaults to 4
    scores = [a["score"] for a in body["apps"]]
    assert scores == sorted(scores, reverse=True)
    assert body["fallback"] == "static_default"
    assert body["model_version"] is None
    assert body["known_user"] is None and body["cached"] is False  # no model: cannot tell
    assert body["variant"] == "champion"
    assert body["latency_ms"] >= 0


@pytest.mark.parametrize(
    "patch",
    [
        {"k": 1},
        {"k": 20},
        {"timestamp": "2026-03-02T10:05:00.123456+02:00"},
        {"user_id": "u" * 128},
        {"user_id": "ünïcødé 用户"},
        {"context": {**GOOD["context"], "secs_since_prev_unlock": None}},
        {"context": {"location": "other", "battery": 0, "charging": True, "network": "offline"}},
        {"context": {"location": "commute", "battery": 100, "charging": False, "network": "cellular",
                     "secs_since_prev_unlock": 0}},
    ],
)
def test_valid_requests_are_answered_never_a_5xx(client: TestClient, static_default: list[str],
                                                 patch: dict[str, Any]) -> None:
    request = {**GOOD, **patch}
    response = client.post("/v1/predict", json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [a["app"] for a in body["apps"]] == static_default[:request.get("k", 4)]
    assert body["fallback"] == "static_default"


# --- predict: invalid requests ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "loc"),
    [
        ({"user_id": ""}, ["body", "user_id"]),
        ({"user_id": "u" * 129}, ["body", "user_id"]),
        ({"user_id": 42}, ["body", "user_id"]),
        ({"timestamp": "not a time"}, ["body", "timestamp"]),
        ({"timestamp": "2026-03-02T08:05:00"}, ["body", "timestamp"]),  # no time zone
        ({"timestamp": "1969-12-31T23:59:59Z"}, ["body", "timestamp"]),  # before 1970
        ({"timestamp": "9999-12-31T23:59:59-14:00"}, ["body", "timestamp"]),  # the next hours overflow
        ({"k": 0}, ["body", "k"]),
        ({"k": 99}, ["body", "k"]),
        ({"k": "4"}, ["body", "k"]),
        ({"colour": "red"}, ["body", "colour"]),
        ({"context": {**GOOD["context"], "battery": 101}}, ["body", "context", "battery"]),
        ({"context": {**GOOD["context"], "battery": -1}}, ["body", "context", "battery"]),
        ({"context": {**GOOD["context"], "location": "moon"}}, ["body", "context", "location"]),
        ({"context": {**GOOD["context"], "network": "5g"}}, ["body", "context", "network"]),
        ({"context": {**GOOD["context"], "secs_since_prev_unlock": -1}},
         ["body", "context", "secs_since_prev_unlock"]),
        ({"context": {**GOOD["context"], "mood": "happy"}}, ["body", "context", "mood"]),
        ({"context": {"location": "home"}}, ["body", "context", "battery"]),
    ],
)
def test_invalid_requests_get_422_naming_the_field(client: TestClient, patch: dict[str, Any],
                                                   loc: list[str]) -> None:
    response = client.post("/v1/predict", json={**GOOD, **patch})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [err["loc"] for err in detail] == [loc]
    assert all(err["msg"] for err in detail)


@pytest.mark.parametrize("field", ["user_id", "timestamp", "context"])
def test_a_missing_required_field_is_named(client: TestClient, field: str) -> None:
    request = {name: value for name, value in GOOD.items() if name != field}
    response = client.post("/v1/predict", json=request)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", field]


@pytest.mark.parametrize("body", [b"{not json", b"", b"null", b"[]", b'"alice"', b"{", b"{\"k\": 1,}"])
def test_a_body_that_is_not_a_json_object_is_a_422_at_body(client: TestClient, body: bytes) -> None:
    response = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]


def test_a_body_that_is_not_utf8_is_a_422_not_a_500(client: TestClient) -> None:
    # Regression: msgspec raises UnicodeDecodeError (not a DecodeError) for invalid UTF-8 in a
    # string; serving.schemas.decode used to let it through and the server answered 500.
    body = b'{"user_id": "\xff\xfe", "timestamp": "2026-03-02T08:05:00Z"}'
    response = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body"]


# --- body size --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/predict", "/admin/cache/flush"])
def test_a_body_over_the_limit_is_a_413(client: TestClient, settings: ServingSettings, path: str) -> None:
    response = client.post(path, content=b" " * (settings.max_body_bytes + 1),
                           headers={"content-type": "application/json", "x-api-key": KEY})
    assert response.request.headers["content-length"] == str(settings.max_body_bytes + 1)
    assert response.status_code == 413
    assert str(settings.max_body_bytes) in response.json()["detail"]


def test_a_body_at_the_limit_is_not_a_413(client: TestClient, settings: ServingSettings) -> None:
    padded = client.post("/v1/predict", content=b" " * (settings.max_body_bytes - 100)
                         + b'{"k": 1}'.ljust(100))  # JSON allows whitespace: exactly at the limit
    assert padded.request.headers["content-length"] == str(settings.max_body_bytes)
    assert padded.status_code == 422  # read and validated, not refused for its size


def test_a_streamed_body_over_the_limit_is_a_413(client: TestClient, settings: ServingSettings) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(settings.max_body_bytes // 1000 + 2):
            yield b" " * 1000

    response = client.post("/v1/predict", content=chunks())
    assert "content-length" not in response.request.headers  # chunked: the size is not announced
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413


def test_a_streamed_body_under_the_limit_is_served(client: TestClient) -> None:
    raw = orjson.dumps(GOOD)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(raw), 10):
            yield raw[i:i + 10]

    response = client.post("/v1/predict", content=chunks())
    assert response.status_code == 200
    assert response.json()["fallback"] == "static_default"


# --- health, readiness, metrics ---------------------------------------------------------------


def test_healthz_is_ok_with_no_model_version(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model_version": None}


def test_readyz_is_503_and_says_why(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready" and body["models"] == {}
    assert body["reasons"][0] == "feature_store_unusable"
    # codes only, never an exception's text (paths, hosts, ports); the text is in the log
    for readiness in [body, *body["use_cases"].values()]:
        assert all(re.fullmatch(r"([a-z_]+:)?[a-z_]+", r) for r in readiness["reasons"]), readiness


def test_metrics_are_prometheus_text_and_count_requests(client: TestClient) -> None:
    assert client.post("/v1/predict", json=GOOD).status_code == 200
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    # every series carries the use case (Prometheus sorts the labels by name)
    assert re.search(r'^feastflow_requests_total\{code="200",endpoint="predict",use_case="next_app"\} '
                     r'[1-9]', text, re.M)
    assert re.search(r'^feastflow_fallbacks_total\{level="static_default",use_case="next_app"\} [1-9]',
                     text, re.M)
    assert "_created" not in text


# --- admin and API keys -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ADMIN)
@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"x-api-key": ""},
                                     {"x-api-key": KEY + " "}, {"x-api-key": KEY.upper()}])
def test_admin_without_the_right_key_is_401(client: TestClient, path: str,
                                            headers: dict[str, str]) -> None:
    response = client.post(path, headers=headers)
    assert response.status_code == 401
    assert "x-api-key" in response.json()["detail"]


def test_admin_reload_with_the_key_reports_no_models(client: TestClient) -> None:
    response = client.post("/admin/reload", headers={"x-api-key": KEY})
    assert response.status_code == 200
    body = response.json()
    assert body["swapped"] == [] and body["models"] == {}


def test_admin_cache_flush_with_the_key_reports_the_counts(client: TestClient) -> None:
    response = client.post("/admin/cache/flush", headers={"x-api-key": KEY})
    assert response.status_code == 200
    body = response.json()
    assert body["flushed"] == {"l1": 0, "l2": 0}
    assert body["use_cases"]["next_app"] == {"l1": 0, "l2": 0}


@pytest.fixture(scope="module")
def keyless_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("keyless"), api_key=None)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("path", ADMIN)
@pytest.mark.parametrize("headers", [{}, {"x-api-key": KEY}])
def test_admin_is_403_when_the_server_has_no_key(keyless_client: TestClient, path: str,
                                                 headers: dict[str, str]) -> None:
    response = keyless_client.post(path, headers=headers)
    assert response.status_code == 403
    assert "FEASTFLOW_API_KEY" in response.json()["detail"]


def test_predict_needs_no_key_by_default(keyless_client: TestClient) -> None:
    assert keyless_client.post("/v1/predict", json=GOOD).status_code == 200


@pytest.fixture(scope="module")
def locked_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("locked"), predict_requires_key=True)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_predict_requires_key_refuses_predict_and_bundle_without_it(locked_client: TestClient) -> None:
    assert locked_client.post("/v1/predict", json=GOOD).status_code == 401
    assert locked_client.post("/v1/predict", json=GOOD, headers={"x-api-key": "no"}).status_code == 401
    assert locked_client.get("/v1/users/alice/bundle").status_code == 401


def test_predict_requires_key_serves_with_it(locked_client: TestClient) -> None:
    headers = {"x-api-key": KEY}
    response = locked_client.post("/v1/predict", json=GOOD, headers=headers)
    assert response.status_code == 200
    assert response.json()["fallback"] == "static_default"
    assert locked_client.get("/v1/users/alice/bundle", headers=headers).status_code == 200


def test_predict_requires_key_still_leaves_health_open(locked_client: TestClient) -> None:
    assert locked_client.get("/healthz").status_code == 200
    assert locked_client.get("/metrics").status_code == 200


# --- request ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", "/v1/predict", {"json": GOOD}, 200),
        ("POST", "/v1/predict", {"json": {}}, 422),
        ("POST", "/v1/predict", {"content": b" " * 70_000}, 413),
        ("GET", "/healthz", {}, 200),
        ("GET", "/readyz", {}, 503),
        ("POST", "/admin/reload", {}, 401),
        ("GET", "/nowhere", {}, 404),
    ],
)
def test_every_response_carries_a_fresh_request_id(client: TestClient, method: str, path: str,
                                                   kwargs: dict[str, Any], status: int) -> None:
    first = client.request(method, path, **kwargs)
    second = client.request(method, path, **kwargs)
    assert first.status_code == status
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(re.fullmatch(r"[0-9a-f]{16}", rid) for rid in ids)
    assert ids[0] != ids[1]


@pytest.mark.parametrize(("method", "path", "kwargs"), [("POST", "/v1/predict", {"json": GOOD}),
                                                      ("GET", "/healthz", {})])
@pytest.mark.parametrize("sent", ["abc-123", "A.b_C-9", "x" * 64])
def test_a_safe_client_request_id_is_echoed(client: TestClient, sent: str, method: str, path: str,
                                            kwargs: dict[str, Any]) -> None:
    response = client.request(method, path, headers={"x-request-id": sent}, **kwargs)
    assert response.status_code == 200
    assert response.headers["x-request-id"] == sent
    assert response.headers.get_list("x-request-id") == [sent]


@pytest.mark.parametrize(("method", "path", "kwargs"), [("POST", "/v1/predict", {"json": GOOD}),
                                                      ("GET", "/healthz", {})])
@pytest.mark.parametrize("sent", ["", "has space", "x" * 65, "semi;colon", "é"])
def test_an_unsafe_client_request_id_is_replaced(client: TestClient, sent: str, method: str, path: str,
                                                 kwargs: dict[str, Any]) -> None:
    response = client.request(method, path, headers={"x-request-id": sent.encode("latin-1")}, **kwargs)
    rid = response.headers["x-request-id"]
    assert rid != sent and re.fullmatch(r"[0-9a-f]{16}", rid)


# --- bundle -----------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}])
def test_bundle_needs_the_api_key(client: TestClient, headers: dict[str, str]) -> None:
    # A user's apps hour by hour are history: no reading them by guessing ids.
    response = client.get("/v1/users/alice/bundle", headers=headers)
    assert response.status_code == 401
    assert "x-api-key" in response.json()["detail"] and "hours" not in response.json()


def test_bundle_is_403_when_the_server_has_no_key(keyless_client: TestClient) -> None:
    response = keyless_client.get("/v1/users/alice/bundle", headers=AUTH)
    assert response.status_code == 403
    assert "FEASTFLOW_API_KEY" in response.json()["detail"]


def test_bundle_gives_24_hours_of_the_static_default(client: TestClient,
                                                     static_default: list[str]) -> None:
    response = client.get("/v1/users/alice/bundle", params={"start": "2026-03-02T08:05:00Z", "k": 3},
                          headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    hours = body["hours"]
    assert len(hours) == 24
    assert all(h["apps"] == static_default[:3] for h in hours)
    first = datetime(2026, 3, 2, 8, tzinfo=UTC)  # the start's hour
    assert [datetime.fromisoformat(h["starts_at"]) for h in hours] == [
        first + timedelta(hours=i) for i in range(24)]
    assert body["fallback"] == "static_default"
    assert body["model_version"] is None and body["known_user"] is None  # no model: cannot tell
    assert body["precomputed"] is False


def test_bundle_defaults_to_now_and_k_4(client: TestClient, static_default: list[str]) -> None:
    before = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    response = client.get("/v1/users/alice/bundle", headers=AUTH)
    after = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    assert response.status_code == 200
    hours = response.json()["hours"]
    assert len(hours) == 24 and all(h["apps"] == static_default[:4] for h in hours)
    assert datetime.fromisoformat(hours[0]["starts_at"]) in (before, after)


def test_bundle_start_with_an_offset_is_converted_to_utc(client: TestClient) -> None:
    response = client.get("/v1/users/alice/bundle", params={"start": "2026-03-02T10:30:00+02:00"},
                          headers=AUTH)
    assert response.status_code == 200
    assert response.json()["hours"][0]["starts_at"] == "2026-03-02T08:00:00+00:00"


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"k": "0"}, ["query", "k"]),
        ({"k": "21"}, ["query", "k"]),  # over max_k
        ({"k": "-1"}, ["query", "k"]),
        ({"k": "four"}, ["query", "k"]),
        ({"k": "2.5"}, ["query", "k"]),
        ({"start": "yesterday"}, ["query", "start"]),
        ({"start": "2026-13-01T00:00:00"}, ["query", "start"]),
    ],
)
def test_bundle_bad_query_parameters_get_422_naming_them(client: TestClient, params: dict[str, str],
                                                         loc: list[str]) -> None:
    response = client.get("/v1/users/alice/bundle", params=params, headers=AUTH)
    assert response.status_code == 422
    assert [err["loc"] for err in response.json()["detail"]] == [loc]


def test_bundle_user_id_over_128_characters_is_a_422(client: TestClient) -> None:
    response = client.get(f"/v1/users/{'u' * 129}/bundle", headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "user_id"]


@pytest.mark.parametrize("start", ["9999-12-31T23:00:00", "0001-01-01T00:00:00+05:00"])
def test_bundle_start_at_the_edge_of_time_is_not_a_500(client: TestClient, start: str) -> None:
    # Regression: the route accepted any ISO time, then datetime arithmetic past year 9999 (or
    # before year 1) raised ValueError/OverflowError and the server answered 500.
    response = client.get("/v1/users/alice/bundle", params={"start": start}, headers=AUTH)
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        assert response.json()["detail"][0]["loc"] == ["query", "start"]


# --- routing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/v1/predictions", "/v2/predict", "/v1/users/alice"])
def test_an_unknown_route_is_404(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/predict"), ("PUT", "/v1/predict"), ("POST", "/healthz"), ("POST", "/readyz"),
     ("POST", "/metrics"), ("GET", "/admin/reload"), ("GET", "/admin/cache/flush"),
     ("POST", "/v1/users/alice/bundle")],
)
def test_a_wrong_method_is_405(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"]


# --- a sampled request log must not turn a valid request into a 500 ---------------------------


@pytest.fixture(scope="module")
def logging_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("logged"), request_log_sample=1.0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("timestamp", ["2026-03-02T08:05:00Z", "9999-12-31T23:59:59-14:00"])
def test_a_logged_prediction_is_still_answered(logging_client: TestClient, timestamp: str) -> None:
    # Regression (second case): the schema accepted any datetime; with the request sampled into
    # the log, PredictionService._record called datetime.fromtimestamp past year 9999 -> 500.
    response = logging_client.post("/v1/predict", json={**GOOD, "timestamp": timestamp})
    assert response.status_code in (200, 422), response.text


# --- several use cases ------------------------------------------------------------------------

LOAN: dict[str, Any] = {
    "dob_ssn": "19900101_1234", "timestamp": "2026-03-02T08:05:00Z",
    "context": {"zipcode": 11930, "person_age": 26, "person_income": 52000,
                "person_home_ownership": "RENT", "person_emp_length": 3.0,
                "loan_intent": "EDUCATION", "loan_amnt": 8000, "loan_int_rate": 11.49}}


def test_the_default_use_case_answers_on_its_own_path_too(client: TestClient) -> None:
    default = client.post("/v1/predict", json=GOOD).json()
    named = client.post("/v1/next_app/predict", json=GOOD).json()
    assert named["apps"] == default["apps"] and named["fallback"] == "static_default"
    assert client.post("/v1/next_app/predict", json={**GOOD, "k": 0}).json()["detail"][0]["loc"] == [
        "body", "k"]


@pytest.mark.parametrize("path", ["/v1/nope/predict", "/v1/NEXT_APP/predict", "/v1/nope/events"])
def test_an_unknown_use_case_is_a_404_naming_the_known_ones(client: TestClient, path: str) -> None:
    response = client.post(path, json=GOOD, headers={"x-api-key": KEY})
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert "unknown use case" in detail and all(n in detail for n in ("next_app", "credit_score"))
    assert re.fullmatch(r"[0-9a-f]{16}", response.headers["x-request-id"])
    metrics = client.get("/metrics").text  # counted under a fixed label, never the path's name
    assert 'use_case="nope"' not in metrics and 'use_case="NEXT_APP"' not in metrics


def test_a_use_case_without_a_feature_store_is_503_and_readyz_says_why(client: TestClient) -> None:
    response = client.post("/v1/credit_score/predict", json=LOAN)
    assert response.status_code == 503
    assert "credit_score" in response.json()["detail"] and "feast" in response.json()["detail"]
    assert client.get("/v1/credit_score/predict").status_code == 405
    ready = client.get("/readyz").json()
    assert set(ready["use_cases"]) >= {"next_app", "credit_score", "taxi_eta"}
    assert ready["use_cases"]["credit_score"]["status"] == "not_ready"
    assert ready["use_cases"]["credit_score"]["reasons"][0] == "feature_store_unusable"


def test_openapi_describes_every_use_case_and_docs_render_it(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    paths = document["paths"]
    for name in ("next_app", "credit_score", "taxi_eta"):
        operation = paths[f"/v1/{name}/predict"]["post"]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert {"timestamp", "context"} <= set(schema["required"])
        assert schema["additionalProperties"] is False
    assert {"/v1/predict", "/v1/events", "/v1/users/{user_id}/bundle", "/healthz", "/readyz",
            "/metrics", "/admin/reload", "/admin/cache/flush"} <= set(paths)
    schemas = document["components"]["schemas"]
    assert set(schemas["NextAppContext"]["properties"]["location"]["enum"]) == {
        "home", "work", "commute", "other"}
    assert schemas["CreditScoreContext"]["properties"]["person_age"]["minimum"] == 18
    assert "k" not in schemas["CreditScorePredictRequest"]["properties"]  # per event: no k
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/v1/taxi_eta/predict" in page.text and "<script" not in page.text


@pytest.fixture(scope="module")
def credit_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    # credit_score as the default use case: served from its static default without a store
    settings = make_settings(tmp_path_factory.mktemp("credit"), use_case="credit_score",
                             use_cases="credit_score,next_app")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_a_classifier_answers_score_and_decision(credit_client: TestClient) -> None:
    for path in ("/v1/predict", "/v1/credit_score/predict"):
        response = credit_client.post(path, json=LOAN)
        assert response.status_code == 200, response.text
        body = response.json()
        assert {k: body[k] for k in ("score", "decision", "known", "fallback", "cached",
                                     "model_version", "variant")} == {
            "score": 0.22, "decision": "review", "known": None, "fallback": "static_default",
            "cached": False, "model_version": None, "variant": "champion"}
        assert "apps" not in body and body["latency_ms"] >= 0
    # FEASTFLOW_USE_CASES restricts the use cases served
    assert credit_client.post("/v1/taxi_eta/predict", json=LOAN).status_code == 404
    no_bundle = credit_client.get("/v1/users/alice/bundle", headers=AUTH)
    assert no_bundle.status_code == 404  # no ranking: no bundle


@pytest.mark.parametrize(
    ("patch", "loc"),
    [
        ({"context": {**LOAN["context"], "loan_intent": "YACHT"}}, ["body", "context", "loan_intent"]),
        ({"context": {**LOAN["context"], "person_age": 12}}, ["body", "context", "person_age"]),
        ({"context": {**LOAN["context"], "loan_amnt": 0}}, ["body", "context", "loan_amnt"]),
        ({"context": {**LOAN["context"], "zipcode": "11930"}}, ["body", "context", "zipcode"]),
        ({"context": {**LOAN["context"], "colour": "red"}}, ["body", "context", "colour"]),
        ({"context": {k: v for k, v in LOAN["context"].items() if k != "loan_int_rate"}},
         ["body", "context", "loan_int_rate"]),
        ({"dob_ssn": "alice"}, ["body", "dob_ssn"]),  # the contract's pattern
        ({"k": 4}, ["body", "k"]),  # a per-event request has no k
    ],
)
def test_a_bad_per_event_request_is_a_422_naming_the_field(credit_client: TestClient,
                                                           patch: dict[str, Any], loc: list[str]) -> None:
    response = credit_client.post("/v1/credit_score/predict", json={**LOAN, **patch})
    assert response.status_code == 422
    assert [err["loc"] for err in response.json()["detail"]] == [loc]


def test_a_classifier_is_served_beside_the_ranking(client: TestClient) -> None:
    import numpy as np

    from feastflow.scoring import Scored
    from serving.models import ServedModel

    class Scorer:
        feature_names = ("loan_amnt",)

        async def score(self, requests: Any, reader: Any, k: int = 1, timings: Any = None) -> Any:
            return [Scored([], [r.context["loan_amnt"] / 10000], True, np.array([[1.0]]))
                    for r in requests]

    core = client.app.state.core  # type: ignore[attr-defined]
    credit = core.use_cases["credit_score"]
    old = credit.unavailable
    credit.unavailable = None  # as if its feature store were applied: a model that reads none
    credit.holder.install([ServedModel("champion", "2", "run", Scorer(), "registry", 0.0)])  # type: ignore[arg-type]
    try:
        low = client.post("/v1/credit_score/predict", json=LOAN).json()
        high = client.post("/v1/credit_score/predict", json={
            **LOAN, "context": {**LOAN["context"], "loan_amnt": 7000}}).json()
        ranked = client.post("/v1/predict", json=GOOD).json()
    finally:
        credit.unavailable = old
        credit.holder.models.clear()
    assert (low["score"], low["decision"], low["known"], low["fallback"], low["model_version"]) == (
        0.8, "deny", True, None, "2")
    assert (high["score"], high["decision"], high["cached"]) == (0.7, "deny", False)
    assert ranked["fallback"] == "static_default" and "apps" in ranked
    metrics = client.get("/metrics").text
    assert re.search(r'^feastflow_requests_total\{code="200",endpoint="predict",use_case="credit_score"\} '
                     r'[1-9]', metrics, re.M)
