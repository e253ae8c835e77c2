"""The event stream over several partitions, against real Redis servers and real processes.

- routing: a user's events always land in the same partition, in the order they were sent;
- leases: three readers share four partitions (2, 1, 1), one that leaves gives its partitions
  to the others;
- failover: three `feastflow stream` processes, one killed with SIGKILL under load while holding
  entries it read and never acknowledged: nothing lost, nothing applied twice, each event logged
  once, online values equal to the offline point-in-time join;
- the stream's Redis client comes from the online store's settings: TLS with a client
  certificate and an ACL user, and a 3-node Redis Cluster (each partition's keys on one slot).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from conftest import REDIS_TEST_URL
from test_online_deployments import (  # noqa: F401  (fixtures: a TLS server, a cluster)
    PASSWORD,
    USER,
    Certificates,
    certificates,
    cluster,
    tls_redis,
)
from test_streaming import (
    SECRET,
    StreamWorld,
    as_payload,
    assert_each_event_applied_and_logged_once,
    make_world,
)

from feastflow.errors import StreamUnavailable
from feastflow.processor import RedisStateStore
from feastflow.redis_config import sync_client
from feastflow.settings import Settings
from feastflow.stream import (
    PartitionedEventStream,
    PartitionLeases,
    RedisEventStream,
    StreamEntry,
    open_event_stream,
    partition_of,
)
from serving.events import EventIntake

pytestmark = pytest.mark.redis

LEASE_MS = 1500
DB8 = REDIS_TEST_URL.rsplit("/", 1)[0] + "/8"  # these tests' own database, flushed by each


def partitioned(settings: Settings, partitions: int, consumer: str = "processor-1"
                ) -> PartitionedEventStream:
    """The use case's stream over `partitions` Redis Streams, as `consumer`."""
    stream = open_event_stream(settings.model_copy(update={
        "stream_partitions": partitions, "stream_lease_ms": LEASE_MS,
        "stream_consumer": consumer}), "next_app")
    assert isinstance(stream, PartitionedEventStream)
    return stream


def events_of(users: int, per_user: int) -> tuple[list[tuple[str, bytes]], list[str]]:
    """(event id, payload) pairs and partition keys: `per_user` events of each user, interleaved."""
    events, keys = [], []
    for n in range(per_user):
        for u in range(users):
            events.append((f"e-{u}-{n}", f'{{"u": {u}, "n": {n}}}'.encode()))
            keys.append(f"user-{u}")
    return events, keys


def read_all(stream: PartitionedEventStream) -> list[StreamEntry]:
    """Everything this reader's partitions hold, acknowledged."""
    out: list[StreamEntry] = []
    while entries := stream.read(1000, 10):
        stream.ack(entries)
        out += entries
    return out


def wait_until(condition: Any, what: Any, timeout_s: float = 60) -> None:
    """Poll `condition` until true; `what` (a message, or a function making one) on a timeout."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what() if callable(what) else what
        time.sleep(0.05)


def test_a_users_events_go_to_one_partition_in_order(tmp_path: Path, redis_url: str) -> None:
    redis.Redis.from_url(DB8).flushdb()
    settings = Settings(home=tmp_path, profile="redis", redis_url=DB8)
    stream = partitioned(settings, 3)
    events, keys = events_of(users=12, per_user=5)
    assert stream.append(events, keys) == [True] * len(events)
    assert stream.append(events[:4], keys[:4]) == [False] * 4  # a retry: appended once
    with pytest.raises(ValueError, match="partition key"):
        stream.append(events[:2])
    assert stream.rebalance().acquired == {0, 1, 2}  # the only reader takes every partition
    stream.claim_abandoned()
    entries = read_all(stream)
    assert len({(e.partition, e.entry_id) for e in entries}) == len(entries) == len(events)
    seen: dict[int, list[int]] = {}
    for entry in entries:
        body = orjson.loads(entry.payload or b"")
        assert entry.partition == partition_of(f"user-{body['u']}", 3)
        seen.setdefault(body["u"], []).append(body["n"])
    assert all(ns == list(range(5)) for ns in seen.values())  # each user's order kept
    assert len({e.partition for e in entries}) == 3  # and the users spread
    assert stream.backlog() == 0
    stream.leave()


def test_three_readers_share_four_partitions_and_take_over_from_one_that_leaves(
        tmp_path: Path, redis_url: str) -> None:
    redis.Redis.from_url(DB8).flushdb()
    settings = Settings(home=tmp_path, profile="redis", redis_url=DB8)
    readers = [partitioned(settings, 4, f"reader-{i}") for i in range(3)]
    leases = [r.leases for r in readers]

    def settle() -> list[set[int]]:
        for _ in range(4):  # each reader sees the others, gives up extras, takes free ones
            for reader in readers:
                reader.leases._due = 0.0
                change = reader.rebalance()
                reader.release(set(change.to_release))
        return [set(lease.owned) for lease in leases]

    owned = settle()
    assert sorted(map(len, owned)) == [1, 1, 2]
    assert set.union(*owned) == {0, 1, 2, 3}  # every partition held once
    client = redis.Redis.from_url(DB8)
    for lease in leases:  # the lease in Redis names its holder
        for partition in lease.owned:
            assert client.get(lease.lease_keys[partition]) == lease.token.encode()
    gone = max(range(3), key=lambda i: len(owned[i]))
    readers[gone].leave()
    readers.pop(gone)
    leases.pop(gone)
    owned = settle()
    assert sorted(map(len, owned)) == [2, 2] and set.union(*owned) == {0, 1, 2, 3}


def test_a_lease_taken_by_another_reader_is_reported_lost(tmp_path: Path, redis_url: str) -> None:
    client = redis.Redis.from_url(DB8)
    client.flushdb()
    keys = [f"leases-test:{p}" for p in range(2)]
    first = PartitionLeases(client, keys, "leases-test:readers", "first", lease_ms=LEASE_MS)
    assert first.maintain().acquired == {0, 1}
    client.set(keys[1], "someone-else")  # its lease expired while it stalled; another took it
    first._due = 0.0
    assert first.maintain().lost == {1}
    assert first.valid() == [0]


# --- three processors, one killed under load ---------------------------------------------------


def _processor(settings: Settings, name: str, flush_seconds: str, logs: Path
               ) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.as_env(), "FEASTFLOW_STREAM_BATCH_EVENTS": "20",
           "FEASTFLOW_STREAM_LOG_FLUSH_SECONDS": flush_seconds, "FEASTFLOW_STREAM_BLOCK_MS": "20",
           "FEASTFLOW_STREAM_LEASE_MS": str(LEASE_MS)}
    with open(logs / f"{name}.log", "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "stream", "--consumer",
                                 name], env=env, stdout=out, stderr=subprocess.STDOUT)


def _tails(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                     for p in sorted(logs.glob("*.log")))


def test_three_processors_one_killed_under_load_lose_nothing_and_apply_each_event_once(
        tmp_path: Path, redis_url: str) -> None:
    world: StreamWorld = make_world(tmp_path, db=9, seed=43, users=32, days=2)
    world = dataclasses.replace(world, settings=world.settings.model_copy(update={
        "stream_partitions": 4, "stream_lease_ms": LEASE_MS}))
    settings = world.settings
    stream = partitioned(settings, 4, "test")
    intake = EventIntake(stream, SECRET, world.spec.event_log)
    client = redis.Redis.from_url(settings.redis_url)
    lease_keys = stream.leases.lease_keys

    def holders() -> list[str]:
        return [(v or b"").decode().partition(":")[0] for v in client.mget(lease_keys)]

    # The victim never logs (nor so acknowledges) what it reads: all it took is pending at its end.
    logs = tmp_path / "logs"
    logs.mkdir()
    processes = {"proc-a": _processor(settings, "proc-a", "60", logs),
                 "proc-b": _processor(settings, "proc-b", "0.3", logs),
                 "proc-c": _processor(settings, "proc-c", "0.3", logs)}
    try:
        wait_until(lambda: set(holders()) == set(processes), lambda: "the processors did not "
                   "share the partitions:\n" + _tails(logs), timeout_s=300)
        victim = "proc-a"
        victims_partitions = [p for p, h in enumerate(holders()) if h == victim]
        payload = as_payload(world.live)
        fed = threading.Event()

        def feed() -> None:  # a steady load, before, during and after the kill
            for i in range(0, len(payload), 20):
                assert intake.submit(payload[i:i + 20]).accepted == len(payload[i:i + 20])
                time.sleep(0.05)
            fed.set()

        feeder = threading.Thread(target=feed)
        feeder.start()

        def victim_pending() -> int:
            return sum(client.xpending(stream.partitions[p].stream, "feastflow-stream")["pending"]
                       for p in victims_partitions)

        wait_until(lambda: victim_pending() >= 20, lambda: "the victim read nothing:\n" + _tails(logs))
        assert not fed.is_set(), "the load ended before the kill: feed slower"
        processes[victim].send_signal(signal.SIGKILL)
        processes[victim].wait(10)
        assert victim_pending() > 0  # read, applied, never logged nor acknowledged
        feeder.join(120)
        wait_until(lambda: victim not in holders() and stream.backlog() == 0,
                   lambda: "the others did not take and drain the dead processor's partitions"
                   + _tails(logs))
        for name in ("proc-b", "proc-c"):  # a graceful stop: log and acknowledge, then leave
            processes[name].send_signal(signal.SIGTERM)
            assert processes[name].wait(120) == 0, _tails(logs)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()

    assert stream.backlog() == 0
    assert_each_event_applied_and_logged_once(world, client)


# --- the stream on the online store's Redis: TLS + ACL, Cluster ---------------------------------


def test_the_stream_speaks_tls_with_a_client_certificate_and_an_acl_user(
        tmp_path: Path, tls_redis: int, certificates: Certificates) -> None:  # noqa: F811
    c = certificates
    settings = Settings(home=tmp_path, profile="redis",
                        redis_url=f"rediss://{USER}:{PASSWORD}@127.0.0.1:{tls_redis}/3",
                        redis_ssl_ca_certs=c.ca, redis_ssl_certfile=c.client_cert,
                        redis_ssl_keyfile=c.client_key)
    stream = partitioned(settings, 2)
    events, keys = events_of(users=6, per_user=3)
    assert stream.append(events, keys) == [True] * len(events)
    stream.rebalance()
    assert len(read_all(stream)) == len(events)
    states = RedisStateStore(sync_client(settings.redis()), "next_app")
    states.mark_seeded()
    assert states.is_seeded()
    # the same server through the URL's credentials: db 3 holds both partitions' streams
    direct = redis.Redis(port=tls_redis, db=3, username=USER, password=PASSWORD, ssl=True,
                         ssl_ca_certs=str(c.ca), ssl_certfile=str(c.client_cert),
                         ssl_keyfile=str(c.client_key))
    assert direct.xlen(stream.partitions[0].stream) + direct.xlen(
        stream.partitions[1].stream) == len(events)
    stream.leave()
    wrong = RedisEventStream(dataclasses.replace(settings.redis(), password="wrong"),
                             "tls-stream")
    with pytest.raises(StreamUnavailable, match="tls-stream unavailable"):
        wrong.append(events[:1])


def test_each_partitions_keys_share_a_slot_on_a_redis_cluster(
        tmp_path: Path, cluster: list[int]) -> None:  # noqa: F811
    url = f"redis://{USER}:{PASSWORD}@" + ",".join(f"127.0.0.1:{p}" for p in cluster) + "/0"
    settings = Settings(home=tmp_path, profile="redis", redis_url=url,
                        redis_type="redis_cluster")
    stream = partitioned(settings, 3)
    events, keys = events_of(users=12, per_user=4)
    assert stream.append(events, keys) == [True] * len(events)
    stream.rebalance()
    stream.claim_abandoned()
    entries = read_all(stream)
    assert len(entries) == len(events) and stream.backlog() == 0
    node = redis.Redis(port=cluster[0], username=USER, password=PASSWORD)
    slots = []
    for p, part in enumerate(stream.partitions):
        names = [part.stream, part.dead_key, part._id_prefix + "e-0-0",
                 stream.leases.lease_keys[p]]
        part_slots = {node.execute_command("CLUSTER KEYSLOT", n) for n in names}
        assert len(part_slots) == 1, names  # one slot: the append script and the dead-letter
        slots.append(part_slots.pop())  # transaction may touch them together
    assert len(set(slots)) == 3
    part = stream.partitions[entries[0].partition]
    part.dead_letter(entries[0], "a test dead letter")  # a transaction on a cluster
    assert stream.status().dead_letters == 1
    stream.leave()
