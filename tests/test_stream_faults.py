"""The stream pipeline under faults, against real Redis servers and real Feast.

- Redis restarted with nothing on disk: the processor recreates its consumer group, replays what
  the online store lost, and a client's retried batch is logged once (dedupe checked against the
  log); /readyz names a processor that makes no progress;
- an undecodable stream entry goes to the dead-letter stream and processing goes on;
- a broker outage is retried with backoff and jitter, one log line per failure streak.

A test that restarts Redis starts its own redis-server on a free port.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from test_streaming import (
    StreamWorld,
)

from feastflow.processor import MemoryStateStore, StreamProcessor
from feastflow.realtime import RealtimeFeatures
from feastflow.settings import FEATURE_REPO
from feastflow.spec import load_spec
from feastflow.store import open_store
from feastflow.stream import RedisEventStream, StreamUnavailable
from serving.events import EventIntake

BATCH_FEATURE = "user_app_usage_fv:opens_28d"  # a batch view: materialized, never pushed


class RedisServer:
    """A redis-server of this test on a free port, keeping nothing on disk (like the issue's)."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.process = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        wait_until(lambda: _pings(client), 30, "redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        """SIGKILL and start again: every key is gone."""
        self.kill()
        self.start()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def wait_until(condition: Callable[[], object], seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} within {seconds:.0f} s")
        time.sleep(0.05)


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


def submit(intake: EventIntake, events: list[dict[str, Any]]) -> int:
    """Append in batches of 100 as a client would, retrying while the broker is unreachable."""
    accepted = 0
    for i in range(0, len(events), 100):
        deadline = time.monotonic() + 30
        while True:
            try:
                accepted += intake.submit(events[i:i + 100]).accepted
                break
            except StreamUnavailable:
                assert time.monotonic() < deadline, "the stream stayed unavailable"
                time.sleep(0.1)
    return accepted


def batch_values(world: StreamWorld, pairs: list[tuple[str, str]]) -> list[Any]:
    rows = [{"user_id": u, "app": a} for u, a in pairs]
    return open_store(world.settings, "next_app").get_online_features(
        [BATCH_FEATURE], rows).to_dict()["opens_28d"]


# --- item 7: retry with backoff --------------------------------------------------------------


def bare_processor(stream: RedisEventStream, events_dir: Path, **kwargs: Any) -> StreamProcessor:
    """A processor on a real Redis stream whose online store is a no-op (only retries matter)."""
    spec = load_spec("next_app", FEATURE_REPO)
    return StreamProcessor(RealtimeFeatures(spec), stream, MemoryStateStore(),
                           lambda source, rows: None, events_dir, **kwargs)


def test_the_retry_delay_backs_off_exponentially_with_jitter(tmp_path: Path) -> None:
    stream = RedisEventStream("redis://127.0.0.1:1/0", "unused")
    processor = bare_processor(stream, tmp_path, retry_seconds=0.1, retry_max_seconds=5.0)
    for failures in range(1, 12):
        bound = min(5.0, 0.1 * 2 ** failures)
        delays = [processor.retry_delay(failures) for _ in range(20)]
        assert all(bound / 2 <= d <= bound for d in delays), (failures, delays)
        assert len(set(delays)) > 1  # jittered: processors restarted together do not sync up


def test_a_broker_outage_is_one_log_line_per_failure_streak(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path)  # not started yet: the broker is down
    stream = RedisEventStream(server.base + "/0", "outage", claim_idle_ms=0)
    processor = bare_processor(stream, tmp_path / "events", retry_seconds=0.01,
                               retry_max_seconds=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=processor.run, args=(stop,), daemon=True)
    caplog.set_level(logging.INFO, logger="feastflow.processor")
    thread.start()
    try:
        wait_until(lambda: processor.stats.failures >= 5, 60, "the processor did not retry")
        server.start()
        wait_until(lambda: any("recovered" in r.getMessage() for r in caplog.records), 60,
                   "no recovery line")
    finally:
        stop.set()
        thread.join(30)
        server.kill()
    lines = [r for r in caplog.records if r.name == "feastflow.processor"]
    failing = [r for r in lines if r.levelno >= logging.WARNING]
    assert len(failing) == 1, [r.getMessage() for r in failing]
    assert failing[0].exc_info is None  # one line, not a traceback per attempt
    assert "ConnectionError" in failing[0].getMessage()
    [recovered] = [r for r in lines if "recovered" in r.getMessage()]
    assert f"{processor.stats.failures} failures" in recovered.getMessage()
