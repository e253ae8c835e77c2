"""`feastflow serve` as a real process, hit with raw sockets: slow, idle and vanishing clients.

uvicorn alone kept slow-header, slow-body and idle connections open for as long as their clients
liked, and a client that hung up mid-body was counted as a 422. The deadlines are set short here
(1 s) so that the tests wait little; every wait is a poll with a generous deadline.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import REDIS_TEST_URL
from prometheus_client.parser import text_string_to_metric_families

from pipelines.demo import free_port, stop_process

pytestmark = pytest.mark.redis
KEY = "http-key"
MAX_CONNECTIONS = 40
PATIENCE_S = 90.0  # generous: a loaded machine is slow, but a held connection is held forever


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """`feastflow serve` on an empty home (static defaults; the Redis profile, for an event
    intake), with 1 s deadlines."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FEASTFLOW_")},
           "FEASTFLOW_HOME": str(tmp_path_factory.mktemp("http") / "home"),
           "FEASTFLOW_PROFILE": "redis", "REDIS_URL": REDIS_TEST_URL, "FEASTFLOW_API_KEY": KEY,
           "FEASTFLOW_USER_HASH_SECRET": "http-secret", "FEASTFLOW_REGISTRY_POLL_SECONDS": "0",
           "FEASTFLOW_LOG_JSON": "false", "FEASTFLOW_HEAD_TIMEOUT_SECONDS": "1",
           "FEASTFLOW_BODY_TIMEOUT_SECONDS": "1", "FEASTFLOW_KEEP_ALIVE_SECONDS": "1",
           "FEASTFLOW_MAX_CONNECTIONS": str(MAX_CONNECTIONS)}
    process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port)],
                               env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with code {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start")
            time.sleep(0.25)
        yield url, port
    finally:
        stop_process(process, 15)


def connect(port: int, first: bytes = b"") -> socket.socket:
    """A raw connection that has sent `first`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if first:
        sock.sendall(first)
    sock.setblocking(False)
    return sock


def closed_by_server(sock: socket.socket, received: dict[int, bytes]) -> bool:
    """Whether the server closed the connection (what it sent before is kept in `received`)."""
    try:
        while data := sock.recv(4096):
            received[sock.fileno()] = received.get(sock.fileno(), b"") + data
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True
    return True


PREDICT_HEAD = (b"POST /v1/predict HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
                b"content-length: 400\r\n\r\n")


def test_slow_and_idle_clients_cannot_hold_the_server(server: tuple[str, int]) -> None:
    url, port = server
    idle = [connect(port) for _ in range(10)]
    slow_head = [connect(port, b"POST /v1/predict HTTP/1.1\r\nhost: test\r\n") for _ in range(10)]
    slow_body = [connect(port, PREDICT_HEAD + b'{"user_id": ') for _ in range(10)]
    # A client after a first answer that then goes quiet (keep-alive) is idle too.
    kept = connect(port, b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n")
    trickling = slow_head + slow_body  # one byte now and then: a read timeout alone would reset
    received: dict[int, bytes] = {}
    numbers = {id(s): s.fileno() for s in [*idle, *trickling, kept]}
    open_ = [*idle, *trickling, kept]
    deadline = time.monotonic() + PATIENCE_S
    while open_:
        assert time.monotonic() < deadline, f"{len(open_)} slow connections still held"
        for sock in [s for s in open_ if s in trickling]:
            with contextlib.suppress(OSError):
                sock.send(b"x" if sock in slow_body else b"x-a: b\r\n")
        time.sleep(0.2)
        open_ = [s for s in open_ if not closed_by_server(s, received)]
    assert all(received.get(numbers[id(s)], b"").startswith(b"HTTP/1.1 408") for s in trickling)
    assert all(numbers[id(s)] not in received for s in idle)  # never a byte sent: closed silently
    assert received[numbers[id(kept)]].startswith(b"HTTP/1.1 200")
    for sock in [*idle, *trickling, kept]:
        sock.close()
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200  # still serving


def test_a_head_over_the_size_cap_is_refused(server: tuple[str, int]) -> None:
    _, port = server
    sock = connect(port, b"GET /healthz HTTP/1.1\r\nhost: test\r\nx-big: " + b"a" * 40_000)
    received: dict[int, bytes] = {}
    number = sock.fileno()
    deadline = time.monotonic() + PATIENCE_S
    while not closed_by_server(sock, received):
        assert time.monotonic() < deadline, "a 40 KB head is still being read"
        time.sleep(0.1)
    assert received[number].startswith(b"HTTP/1.1 431")
    sock.close()


def test_connections_over_the_limit_get_a_fast_503(server: tuple[str, int]) -> None:
    _, port = server
    for _ in range(5):  # idle connections are cut after 1 s: on a slow machine, try again
        idle = [connect(port) for _ in range(MAX_CONNECTIONS)]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
                answer = sock.recv(4096)
        finally:
            for sock in idle:
                sock.close()
        if answer.startswith(b"HTTP/1.1 503"):
            return
    pytest.fail(f"never refused over {MAX_CONNECTIONS} connections; last answer {answer[:40]!r}")


def request_counts(url: str, endpoint: str) -> dict[str, float]:
    """Requests counted per status code for an endpoint, from /metrics."""
    counts: dict[str, float] = {}
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if ("request" in sample.name and sample.name.endswith("_total")
                    and labels.get("endpoint") == endpoint):
                code = labels.get("code", labels.get("status", ""))
                counts[code] = counts.get(code, 0.0) + sample.value
    return counts


@pytest.mark.parametrize(("path", "endpoint"), [("/v1/predict", "predict"),
                                                ("/v1/events", "events")])
def test_a_client_gone_mid_body_is_counted_as_499_not_422(server: tuple[str, int], path: str,
                                                          endpoint: str) -> None:
    url, port = server
    head = (f"POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
            f"x-api-key: {KEY}\r\ncontent-length: 400\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + b'{"user_id": "gone", "timest')
        time.sleep(0.1)  # the head is read and the app is waiting for the rest
    deadline = time.monotonic() + PATIENCE_S
    while (counts := request_counts(url, endpoint)).get("499", 0) < 1:
        assert time.monotonic() < deadline, f"no 499 counted: {counts}"
        time.sleep(0.2)
    assert counts.get("422", 0) == 0, counts
