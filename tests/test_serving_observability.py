"""Observability of the prediction server: Prometheus metrics, JSON logs with request ids, request log."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from enum import IntEnum
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.logs import JsonFormatter, RequestIdMiddleware, configure_logging, new_request_id, request_id
from serving.metrics import ServingMetrics
from serving.request_log import PredictionLog

# -- metrics ----------------------------------------------------------------------------------------


def samples(metrics: ServingMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the rendered text, keyed by name and labels."""
    body, _ = metrics.render()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def value(metrics: ServingMetrics, sample: str, /, **labels: str) -> float | None:
    """One sample's value, None when the series does not exist (use_case: the metrics' own)."""
    labels.setdefault("use_case", metrics.use_case)
    return samples(metrics).get((sample, frozenset(labels.items())))


def test_metrics_count_what_the_hot_path_reports() -> None:
    m = ServingMetrics()
    m.observe_request("predict", 200, 0.004)
    m.observe_request("predict", 200, 0.0003)
    m.observe_request("predict", 503, 0.010)
    m.observe_stage("inference", 0.0015)
    m.observe_stage("feature_fetch", 0.0001)
    for hit in (True, True, False):
        m.cache("l1", hit)
    m.cache("l2", False)
    m.cache_many("l2", 0, 4)
    m.cache_many("l1", 5, 0)
    m.fallback("popular")
    m.variant("champion")
    m.variant("champion")
    m.variant("challenger")
    m.error("FeaturesUnavailable")
    m.shadow_outcome("scored")
    m.request_log_dropped(3)
    m.set_circuit_state("online_store", "half_open")

    assert value(m, "feastflow_requests_total", endpoint="predict", code="200") == 2
    assert value(m, "feastflow_requests_total", endpoint="predict", code="503") == 1
    assert value(m, "feastflow_request_duration_seconds_count", endpoint="predict") == 3
    assert value(m, "feastflow_request_duration_seconds_sum", endpoint="predict") == pytest.approx(0.0143)
    # the sub-millisecond buckets exist and split fast from slow
    assert value(m, "feastflow_request_duration_seconds_bucket", endpoint="predict", le="0.0005") == 1
    assert value(m, "feastflow_stage_duration_seconds_bucket", stage="feature_fetch", le="0.0002") == 1
    assert value(m, "feastflow_stage_duration_seconds_bucket", stage="inference", le="0.001") == 0
    assert value(m, "feastflow_stage_duration_seconds_bucket", stage="inference", le="0.002") == 1
    assert value(m, "feastflow_stage_duration_seconds_count", stage="total") == 0  # pre-created
    assert value(m, "feastflow_cache_requests_total", level="l1", result="hit") == 7
    assert value(m, "feastflow_cache_requests_total", level="l1", result="miss") == 1
    assert value(m, "feastflow_cache_requests_total", level="l2", result="miss") == 5
    assert value(m, "feastflow_cache_requests_total", level="l2", result="hit") == 0
    assert value(m, "feastflow_fallbacks_total", level="popular") == 1
    assert value(m, "feastflow_variant_requests_total", variant="champion") == 2
    assert value(m, "feastflow_variant_requests_total", variant="challenger") == 1
    assert value(m, "feastflow_errors_total", type="FeaturesUnavailable") == 1
    assert value(m, "feastflow_shadow_total", outcome="scored") == 1
    assert value(m, "feastflow_shadow_total", outcome="failed") == 0
    assert value(m, "feastflow_request_log_dropped_total") == 3
    assert value(m, "feastflow_circuit_state", name="online_store") == 2


def test_metrics_render_prometheus_text() -> None:
    m = ServingMetrics()
    m.observe_request("predict", 200, 0.001)
    body, content_type = m.render()
    assert content_type.startswith("text/plain")
    assert b'feastflow_requests_total{code="200",endpoint="predict",use_case="next_app"} 1.0' in body
    assert b"# TYPE feastflow_stage_duration_seconds histogram" in body


def test_model_version_info_switches_labels() -> None:
    m = ServingMetrics()
    m.set_model_version("champion", 3)
    m.set_model_version("challenger", "7")
    m.set_model_version("champion", 4)
    m.set_model_version("champion", 4)  # idempotent
    info = {labels: v for (name, labels), v in samples(m).items() if name == "feastflow_model_version_info"}
    assert info == {frozenset({("use_case", "next_app"), ("variant", "champion"), ("version", "4")}): 1,
                    frozenset({("use_case", "next_app"), ("variant", "challenger"), ("version", "7")}): 1}
    m.clear_model_version("challenger")
    assert value(m, "feastflow_model_version_info", variant="challenger", version="7") is None


def test_metrics_registries_are_separate() -> None:
    a, b = ServingMetrics(), ServingMetrics()  # the global registry would refuse the second
    a.variant("champion")
    assert value(a, "feastflow_variant_requests_total", variant="champion") == 1
    assert value(b, "feastflow_variant_requests_total", variant="champion") is None


def test_metrics_of_each_use_case_share_the_registry_under_their_own_label() -> None:
    m = ServingMetrics(use_case="next_app")
    credit = m.for_use_case("credit_score")
    assert credit.registry is m.registry
    m.observe_request("predict", 200, 0.001)
    credit.observe_request("predict", 200, 0.001)
    credit.observe_request("predict", 200, 0.001)
    credit.fallback("static_default")
    credit.set_model_version("champion", 2)
    m.set_model_version("champion", 9)
    credit.request_log_dropped(2)
    credit.observe_batch(3)
    assert value(m, "feastflow_requests_total", endpoint="predict", code="200") == 1
    assert value(credit, "feastflow_requests_total", endpoint="predict", code="200") == 2
    assert value(credit, "feastflow_fallbacks_total", level="static_default") == 1
    assert value(m, "feastflow_fallbacks_total", level="static_default") is None
    assert value(credit, "feastflow_model_version_info", variant="champion", version="2") == 1
    assert value(m, "feastflow_model_version_info", variant="champion", version="9") == 1
    assert value(credit, "feastflow_request_log_dropped_total") == 2
    assert value(credit, "feastflow_batch_size_count") == 1
    # every feastflow series of the rendered text carries a use case
    assert all("use_case" in dict(labels) for (name, labels) in samples(m) if name.startswith("feastflow_"))


def test_metrics_follow_prometheus_naming_and_carry_the_runtime_collectors() -> None:
    m = ServingMetrics()
    m.observe_request("predict", 200, 0.001)
    names = {name for name, _ in samples(m)}
    # durations in seconds named `_duration_seconds`, the HTTP status as `code`
    assert "feastflow_request_duration_seconds_count" in names
    assert "feastflow_stage_duration_seconds_count" in names
    assert not any("latency" in name or name.endswith("_hours") for name in names)
    assert value(m, "feastflow_requests_total", endpoint="predict", code="200") == 1
    assert all("status" not in dict(labels) for _, labels in samples(m))
    # the process and GC collectors the default registry would have, in the server's own registry
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes",
            "process_open_fds", "python_gc_collections_total", "python_info"} <= names
    # their families belong to each server's registry: a second server has its own
    assert "process_cpu_seconds_total" in {name for name, _ in samples(ServingMetrics())}


def test_circuit_state_rejects_unknown_states() -> None:
    m = ServingMetrics()
    m.set_circuit_state("redis", 1)
    assert value(m, "feastflow_circuit_state", name="redis") == 1
    m.set_circuit_state("redis", IntEnum("State", "CLOSED OPEN HALF_OPEN", start=0).HALF_OPEN)
    assert value(m, "feastflow_circuit_state", name="redis") == 2
    with pytest.raises(ValueError):
        m.set_circuit_state("redis", 5)
    with pytest.raises(KeyError):
        m.set_circuit_state("redis", "ajar")


# -- logs -------------------------------------------------------------------------------------------


def make_record(msg: str, *args: object, exc: bool = False, **extra: Any) -> logging.LogRecord:
    """A record as logger.info(msg, *args, extra=extra) would make it."""
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            exc_info = sys.exc_info()
    record = logging.getLogger("serving.test").makeRecord(
        "serving.test", logging.WARNING, __file__, 1, msg, args, exc_info, extra=extra or None)
    return record


def test_json_formatter_emits_one_json_object_with_request_id() -> None:
    token = request_id.set("abc123")
    try:
        line = JsonFormatter().format(make_record("scored %d items", 5, user_hash="u1", took_ms=1.25))
    finally:
        request_id.reset(token)
    assert "\n" not in line
    doc = orjson.loads(line)
    assert doc["msg"] == "scored 5 items"
    assert doc["level"] == "WARNING"
    assert doc["logger"] == "serving.test"
    assert doc["request_id"] == "abc123"
    assert doc["user_hash"] == "u1" and doc["took_ms"] == 1.25
    ts = datetime.fromisoformat(doc["ts"])
    assert ts.utcoffset() == timedelta(0)
    assert abs((datetime.now(UTC) - ts).total_seconds()) < 60


def test_json_formatter_without_request_and_with_odd_values() -> None:
    doc = orjson.loads(JsonFormatter().format(
        make_record("x", exc=True, level="shadowed", path=Path("/a"), big=2**70)))
    assert "request_id" not in doc
    assert doc["level"] == "WARNING" and doc["extra.level"] == "shadowed"  # an extra never overwrites
    assert doc["path"] == "/a"
    assert doc["big"] == 2**70  # orjson refuses it; the stdlib fallback still writes the line
    assert "RuntimeError: boom" in doc["exc"]


@pytest.fixture()
def log_stream() -> Iterator[io.StringIO]:
    """A stream for configure_logging; the root logger's handlers and level are restored after."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield io.StringIO()
    for handler in root.handlers[:]:
        if handler not in before:
            root.removeHandler(handler)
    root.setLevel(level)


def test_configure_logging_is_idempotent_and_writes_json(log_stream: io.StringIO) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    configure_logging(json=True, level="debug")
    configure_logging(json=False)
    handler = configure_logging(json=True, level="INFO", stream=log_stream)
    assert [h for h in root.handlers if h not in before] == [handler]  # one handler, the last one
    assert root.level == logging.INFO
    logging.getLogger("serving.x").info("hello %s", "world", extra={"k": 1})
    logging.getLogger("serving.x").debug("not at INFO")
    [line] = log_stream.getvalue().splitlines()
    assert orjson.loads(line)["msg"] == "hello world"
    assert orjson.loads(line)["k"] == 1


def test_text_format_shows_request_id(log_stream: io.StringIO) -> None:
    configure_logging(json=False, stream=log_stream)
    token = request_id.set("rid-1")
    try:
        logging.getLogger("serving.x").warning("slow")
    finally:
        request_id.reset(token)
    assert re.search(r"WARNING +serving\.x \[rid-1\]: slow$", log_stream.getvalue().strip())


@pytest.mark.parametrize("given", ["abc-123", "A.b_c", "x" * 64])
def test_new_request_id_keeps_a_safe_client_id(given: str) -> None:
    assert new_request_id(given) == given


@pytest.mark.parametrize("given", [None, "", "x" * 65, "a b", "<script>", "id\r\nSet-Cookie: a=1", "ü",
                                   "a/b"])
def test_new_request_id_replaces_an_unsafe_one(given: str | None) -> None:
    rid = new_request_id(given)
    assert re.fullmatch(r"[0-9a-f]{16}", rid)
    assert rid != new_request_id(given)


def tiny_app() -> RequestIdMiddleware:
    """A Starlette app that echoes the request id it sees, wrapped in the middleware."""

    def echo(request: Request) -> JSONResponse:
        logging.getLogger("serving.echo").info("inside")
        return JSONResponse({"context": request_id.get(), "state": request.state.request_id},
                            headers={"x-request-id": "set-by-the-app"})

    async def echo_async(request: Request) -> JSONResponse:
        return JSONResponse({"context": request_id.get()})

    return RequestIdMiddleware(Starlette(routes=[Route("/echo", echo), Route("/async", echo_async)]))


def test_middleware_sets_and_returns_request_id() -> None:
    with TestClient(tiny_app()) as client:
        r = client.get("/echo", headers={"X-Request-ID": "client-id.42"})
        assert r.status_code == 200
        assert r.headers["x-request-id"] == "client-id.42"
        assert r.headers.get_list("x-request-id") == ["client-id.42"]  # the app's own value is replaced
        assert r.json() == {"context": "client-id.42", "state": "client-id.42"}

        r = client.get("/async")
        rid = r.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{16}", rid)
        assert r.json() == {"context": rid}
        assert client.get("/async").headers["x-request-id"] != rid  # fresh per request
    assert request_id.get() is None  # nothing leaks out of a request


@pytest.mark.parametrize("bad", ["<script>alert(1)</script>", "x" * 65, "a b", "../../etc/passwd", ""])
def test_middleware_replaces_a_malicious_request_id(bad: str) -> None:
    with TestClient(tiny_app()) as client:
        r = client.get("/async", headers={"X-Request-ID": bad})
    rid = r.headers["x-request-id"]
    assert rid != bad and re.fullmatch(r"[0-9a-f]{16}", rid)
    assert r.json() == {"context": rid}


def test_request_id_reaches_log_lines_written_during_the_request(log_stream: io.StringIO) -> None:
    configure_logging(json=True, stream=log_stream)
    with TestClient(tiny_app()) as client:
        client.get("/echo", headers={"X-Request-ID": "trace-me"})
    docs = [orjson.loads(line) for line in log_stream.getvalue().splitlines()]
    [inside] = [d for d in docs if d["logger"] == "serving.echo"]
    # the sync route ran in a worker thread: the context variable travelled with it
    assert inside["msg"] == "inside" and inside["request_id"] == "trace-me"


def test_middleware_restores_the_context_and_passes_other_scopes_through() -> None:
    seen: list[tuple[str, str | None]] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((scope["type"], request_id.get()))
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def main() -> None:
        middleware = RequestIdMiddleware(app)
        await middleware({"type": "http", "headers": [(b"x-request-id", b"one")]}, receive, send)
        assert request_id.get() is None  # reset after the request, even within one task
        lifespan: dict[str, Any] = {"type": "lifespan"}
        await middleware(lifespan, receive, send)
        assert "state" not in lifespan

    asyncio.run(main())
    assert seen == [("http", "one"), ("lifespan", None)]
    assert sent[0]["headers"] == [(b"content-type", b"text/plain"), (b"x-request-id", b"one")]


def test_wrapping_the_whole_app_tags_unhandled_errors_too(log_stream: io.StringIO) -> None:
    # Starlette's ServerErrorMiddleware (where the catch-all Exception handler runs) sits outside any
    # add_middleware() middleware; only wrapping the app puts the id on 500s and on their log line.
    api = FastAPI()

    @api.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logging.getLogger("serving.errors").exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @api.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    configure_logging(json=True, stream=log_stream)
    with TestClient(RequestIdMiddleware(api), raise_server_exceptions=False) as client:
        r = client.get("/boom", headers={"X-Request-ID": "err-1"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "err-1"
    docs = [orjson.loads(line) for line in log_stream.getvalue().splitlines()]
    [error] = [d for d in docs if d["logger"] == "serving.errors"]
    assert error["request_id"] == "err-1" and "RuntimeError: boom" in error["exc"]


# -- request log ------------------------------------------------------------------------------------

SERVED = datetime(2024, 5, 1, 23, 58, 30, 123456, tzinfo=UTC)


def prediction(i: int, served_at: datetime = SERVED) -> dict[str, Any]:
    """A record as the predict route would log it."""
    return {
        "request_id": f"req-{i}",
        "served_at": served_at,
        "request_ts": served_at - timedelta(seconds=1),
        "user_hash": f"u{i % 7}",
        "variant": "challenger" if i % 3 == 0 else "champion",
        "model_version": "4",
        "fallback": "popular" if i % 5 == 0 else None,
        "items": ["a", "b", "c"],
        "scores": [0.9, 0.5, 0.1],
        "features": orjson.dumps({"recency": [1, 2, 3], "freq": [0.5, 0.1, 0.0]}).decode(),
        "latency_ms": 3.25,
        "shadow": i % 4 == 0,
    }


def parquet_files(directory: Path) -> list[Path]:
    """The visible Parquet files under a directory."""
    return sorted(directory.rglob("part-*.parquet"))


def leftovers(directory: Path) -> list[Path]:
    """Temporary files left behind (rglob matches hidden names too)."""
    return [p for p in directory.rglob("*") if p.name.endswith(".tmp")]


def test_prediction_log_writes_partitioned_parquet(tmp_path: Path) -> None:
    directory = tmp_path / "served"
    with PredictionLog(directory, sample=1.0, flush_seconds=60) as plog:
        for i in range(30):
            # 23:58 and 00:02 of the next day: two dates, two hours; one in a +02:00 zone
            served = SERVED + timedelta(minutes=4 * (i % 2))
            if i == 1:
                served = served.astimezone(timezone(timedelta(hours=2)))
            assert plog.maybe_record(prediction(i, served))
        assert plog.pending == 30
        assert parquet_files(directory) == []  # nothing before the flush
        assert plog.flush() == 30
        assert plog.pending == 0
    files = parquet_files(directory)
    assert [p.parent.relative_to(directory).as_posix() for p in files] == [
        "date=2024-05-01/hour=23", "date=2024-05-02/hour=00"]
    assert all(re.fullmatch(r"part-[0-9a-f]{32}\.parquet", p.name) for p in files)
    assert leftovers(directory) == []

    df = pd.read_parquet(directory)
    assert len(df) == 30
    assert str(df["served_at"].dtype) == "datetime64[us, UTC]"
    assert str(df["request_ts"].dtype) == "datetime64[us, UTC]"
    assert df["latency_ms"].dtype == "float64"
    assert df["shadow"].dtype == "bool"
    assert df["shadow"].sum() == 8
    row = df.set_index("request_id").loc["req-0"]
    assert row["served_at"] == pd.Timestamp(SERVED)  # microseconds kept
    assert list(row["items"]) == ["a", "b", "c"]
    assert list(row["scores"]) == [0.9, 0.5, 0.1]
    assert orjson.loads(row["features"]) == {"recency": [1, 2, 3], "freq": [0.5, 0.1, 0.0]}
    assert row["fallback"] == "popular"
    assert df["fallback"].isna().sum() == 24
    late = pd.read_parquet(files[1])
    assert len(late) == 15
    assert (late["served_at"] == pd.Timestamp(SERVED + timedelta(minutes=4))).all()  # the +02:00 one too


def test_prediction_log_sample_zero_writes_nothing(tmp_path: Path) -> None:
    with PredictionLog(tmp_path / "served", sample=0.0, flush_seconds=60) as plog:
        assert not any(plog.maybe_record(prediction(i)) for i in range(1000))
        assert plog.flush() == 0
    assert not (tmp_path / "served").exists()
    assert plog.dropped == 0


def test_prediction_log_samples_about_the_share(tmp_path: Path) -> None:
    with PredictionLog(tmp_path / "served", sample=0.2, flush_seconds=60) as plog:
        kept = sum(plog.maybe_record(prediction(i)) for i in range(5000))
        assert 800 < kept < 1200  # 1000 expected, sd ~28
        assert plog.flush() == kept


def test_prediction_log_bounded_buffer_counts_drops(tmp_path: Path) -> None:
    drops: list[int] = []
    plog = PredictionLog(tmp_path / "served", sample=1.0, flush_seconds=60, max_buffer=10,
                         on_drop=drops.append)
    kept = [plog.maybe_record(prediction(i)) for i in range(25)]
    assert kept == [True] * 10 + [False] * 15
    assert sum(drops) == 15 and plog.dropped == 15
    plog.close()
    assert len(pd.read_parquet(tmp_path / "served")) == 10
    assert not plog.maybe_record(prediction(99))  # after close: counted, not silently ignored
    assert plog.dropped == 16


def test_prediction_log_close_flushes_and_stops_the_thread(tmp_path: Path) -> None:
    plog = PredictionLog(tmp_path / "served", sample=1.0, flush_seconds=3600)
    for i in range(7):
        plog.maybe_record(prediction(i))
    plog.close()
    plog.close()  # idempotent
    assert not plog._thread.is_alive()
    assert len(pd.read_parquet(tmp_path / "served")) == 7
    assert leftovers(tmp_path) == []


def wait_until_written(plog: PredictionLog, rows: int, timeout_s: float = 10.0) -> None:
    """Let the log's background thread write `rows` rows (or give up after the timeout)."""
    deadline = time.monotonic() + timeout_s
    while plog.written < rows and time.monotonic() < deadline:
        time.sleep(0.02)


def test_prediction_log_background_thread_flushes(tmp_path: Path) -> None:
    with PredictionLog(tmp_path / "served", sample=1.0, flush_seconds=0.05) as plog:
        for i in range(5):
            plog.maybe_record(prediction(i))
        wait_until_written(plog, 5)
        assert plog.written == 5
        assert sum(len(pd.read_parquet(p)) for p in parquet_files(tmp_path / "served")) == 5


def test_prediction_log_flushes_early_when_half_full(tmp_path: Path) -> None:
    with PredictionLog(tmp_path / "served", sample=1.0, flush_seconds=3600, max_buffer=100) as plog:
        for i in range(50):
            plog.maybe_record(prediction(i))
        wait_until_written(plog, 50)
        assert plog.written == 50


def test_prediction_log_keeps_records_when_a_write_fails(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "served"
    directory.mkdir()
    # A plain file where the partition directory must go: mkdir fails, even for root.
    blocker = directory / "date=2024-05-01"
    blocker.write_text("in the way")
    drops: list[int] = []
    plog = PredictionLog(directory, sample=1.0, flush_seconds=3600, on_drop=drops.append)
    for i in range(6):
        plog.maybe_record(prediction(i))
    plog.maybe_record(prediction(6, served_at=SERVED + timedelta(hours=2)))  # another partition: fine
    with caplog.at_level(logging.ERROR, logger="serving.request_log"):
        assert plog.flush() == 1
    assert "will retry" in caplog.text
    assert plog.pending == 6 and drops == []
    assert leftovers(directory) == []

    blocker.unlink()
    plog.maybe_record(prediction(7))
    assert plog.flush() == 7
    plog.close()
    df = pd.read_parquet(directory)
    assert sorted(df["request_id"]) == sorted(f"req-{i}" for i in range(8))
    assert drops == [] and plog.dropped == 0


def test_prediction_log_failed_writes_stay_bounded(tmp_path: Path) -> None:
    directory = tmp_path / "served"
    directory.mkdir()
    (directory / "date=2024-05-01").write_text("in the way")
    drops: list[int] = []
    plog = PredictionLog(directory, sample=1.0, flush_seconds=3600, max_buffer=10, on_drop=drops.append)
    for i in range(8):
        plog.maybe_record(prediction(i))
    plog.flush()
    for i in range(8, 10):
        plog.maybe_record(prediction(i))
    assert not plog.maybe_record(prediction(10))  # full while the disk keeps failing
    assert sum(drops) == 1 and plog.pending == 10
    plog.close()  # still failing: what is left is reported, not lost silently
    assert sum(drops) == 11 and plog.dropped == 11


def test_prediction_log_drops_bad_records_without_blocking_good_ones(tmp_path: Path) -> None:
    drops: list[int] = []
    with PredictionLog(tmp_path / "served", sample=1.0, flush_seconds=3600, on_drop=drops.append) as plog:
        missing = prediction(1)
        del missing["user_hash"]
        wrong_type = prediction(2) | {"scores": "not a list"}
        as_objects = prediction(3) | {"model_version": 5, "features": {"recency": [1.5]}}
        for record in (prediction(0), missing, wrong_type, as_objects):
            plog.maybe_record(record)
        assert plog.flush() == 2
        assert plog.pending == 0 and drops == [2]
    df = pd.read_parquet(tmp_path / "served").set_index("request_id")
    assert sorted(df.index) == ["req-0", "req-3"]
    assert df.loc["req-3", "model_version"] == "5"
    assert orjson.loads(df.loc["req-3", "features"]) == {"recency": [1.5]}


def test_prediction_log_concurrent_writers(tmp_path: Path) -> None:
    with PredictionLog(tmp_path / "served", sample=1.0, flush_seconds=0.01) as plog:
        def work(base: int) -> None:
            for i in range(500):
                plog.maybe_record(prediction(base + i))

        threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    df = pd.read_parquet(tmp_path / "served")
    assert len(df) == 2000 and df["request_id"].is_unique
    assert plog.dropped == 0
    assert leftovers(tmp_path) == []
