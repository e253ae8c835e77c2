"""The server against a Redis that hangs: each test starts its own redis-server on a free port
and stops it with SIGSTOP (a hung host: connections accepted, nothing answered), then SIGCONT.

No model and no feature store are needed: the default use case takes events and answers /readyz
without them (Redis profile, empty home).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from test_serving_integration import free_port, running

from serving.settings import ServingSettings

pytestmark = pytest.mark.redis
KEY = "fault-key"


@dataclass
class OwnRedis:
    """A redis-server this test started (and may stop and resume)."""

    process: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: it reads what was sent meanwhile and answers again."""
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A fresh redis-server on a free port, nothing on disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path)],
                               stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(redis.ConnectionError):
            if client.ping():
                break
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    try:
        yield OwnRedis(process, url)
    finally:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        process.wait(10)


def settings_on(redis_url: str, home: Path, **overrides: Any) -> ServingSettings:
    """The Redis profile on an empty home: no model, no feature store, events taken."""
    values: dict[str, Any] = {"home": home, "profile": "redis", "redis_url": redis_url,
                              "api_key": KEY, "registry_poll_seconds": 0, "log_json": False,
                              "request_log_sample": 0.0, "user_hash_secret": "fault-secret",
                              **overrides}
    return ServingSettings(**values)


def events(prefix: str, n: int) -> list[dict[str, Any]]:
    """n valid next_app events with ids prefix-0.. (an hour ago: inside every time bound)."""
    at = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    return [{"event_id": f"{prefix}-{i}", "user_id": "fault-user", "timestamp": at, "app": "mail",
             "secs_since_prev_unlock": 30.5, "session_seconds": 12.0, "location": "home",
             "battery": 80, "charging": False, "network": "wifi", "os_version": "android-14"}
            for i in range(n)]


def post_events(client: httpx.Client, batch: list[dict[str, Any]]) -> httpx.Response:
    """POST /v1/events with the key, patient enough for a hung Redis."""
    return client.post("/v1/events", json={"events": batch}, headers={"x-api-key": KEY},
                       timeout=120)


def test_a_503_on_events_means_nothing_was_accepted(own_redis: OwnRedis, tmp_path: Path) -> None:
    # Redis hung for longer than the append's deadline: the batch got 503 "nothing was
    # accepted", yet every event was written when Redis resumed (the queued script ran late).
    settings = settings_on(own_redis.url, tmp_path / "home")
    stream_key = settings.event_stream_key(settings.use_case)
    probe = redis.Redis.from_url(own_redis.url)
    with running(settings) as client:
        first = post_events(client, events("before", 3))
        assert first.status_code == 202 and first.json()["accepted"] == 3, first.text
        own_redis.stop()
        try:
            refused = post_events(client, events("hung", 10))
        finally:
            own_redis.resume()
        assert refused.status_code == 503, refused.text
        assert "nothing was accepted" in refused.json()["detail"]
        # The retry of the very same batch: had the refused call landed late, its ids would be
        # duplicates now.
        retried = post_events(client, events("hung", 10))
    assert retried.status_code == 202, retried.text
    assert (retried.json()["accepted"], retried.json()["duplicates"]) == (10, 0)
    assert probe.xlen(stream_key) == 13


def test_readyz_answers_codes_within_its_budget_with_redis_hung(own_redis: OwnRedis,
                                                                tmp_path: Path) -> None:
    # It answered with the exception's text (host, port, errno), after 10 s and more.
    settings = settings_on(own_redis.url, tmp_path / "home", readiness_budget_seconds=0.5)
    with running(settings) as client:
        assert "event_stream_unreachable" not in client.get("/readyz").json()["reasons"]
        own_redis.stop()
        try:
            # Several in a row: a probe still hanging from the last call is not started again.
            # The client's 8 s is a generous deadline, still under Redis's 10 s socket timeout.
            answers = [client.get("/readyz", timeout=8) for _ in range(4)]
        finally:
            own_redis.resume()
        for answer in answers:
            body = answer.json()
            assert "event_stream_unreachable" in body["reasons"], body
            port = own_redis.url.rsplit(":", 1)[1].split("/")[0]
            assert port not in answer.text and "127.0.0.1" not in answer.text
            assert "Error" not in answer.text and "errno" not in answer.text.lower()
        deadline = time.monotonic() + 60
        while "event_stream_unreachable" in client.get("/readyz").json()["reasons"]:
            assert time.monotonic() < deadline, "readyz still says unreachable after SIGCONT"
            time.sleep(0.2)

