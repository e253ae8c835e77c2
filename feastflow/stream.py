"""The durable event stream between `POST /v1/events` and the stream processor.

One interface, two brokers:
- `RedisEventStream` (Redis profile): a Redis Stream read through a consumer group. Appends are
  deduplicated by event id (a Lua script: `SET NX` on the id with a TTL, then `XADD`, atomically),
  entries stay pending until the processor acknowledges them, and a restarted processor first
  re-reads what it (or a dead peer) took and never acknowledged.
- `MemoryEventStream` (embedded profile): the same interface in process, so the server can run
  its own processor with no services (not durable: a restart loses what was not yet processed).

Faults the processor must survive, each answered here:
- an entry that cannot be decoded goes to a dead-letter stream (`dead_letter`) with the error and
  the time, and is acknowledged: one bad entry never stops the ones after it;
- Redis restarted with nothing on disk: the consumer group is gone (NOGROUP); the next read
  recreates it from the start of what the stream holds, and the dedupe memory is gone too, which
  `dedupe_started` admits so the processor checks the event log instead;
- `status` gives what /readyz needs to see a processor that stopped making progress.

Kafka slots in behind the same interface: `append` is an idempotent producer keyed by user (one
partition per user keeps a user's events in order), `read` a consumer-group poll, `ack` an offset
commit after the offline log write, `pending` what the group re-delivers after a rebalance.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from feastflow.errors import StreamUnavailable
from feastflow.redis_config import RedisConfig, parse_redis, sync_client
from feastflow.settings import Settings

log = logging.getLogger(__name__)

DEAD_LETTER_MAX = 100_000  # entries kept in a dead-letter stream (approximate trim)

# KEYS[1]: the stream; ARGV[1]: id TTL (s), ARGV[2]: id key prefix, ARGV[3]: the caller's
# deadline (Unix ms on Redis's clock), then (event id, payload) pairs. Atomic in Redis: an event
# id is appended once, whatever the client retries; a call that runs after its deadline (Redis
# was hung, the caller gave up and answered 503) appends nothing.
_APPEND_ONCE = """
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[3]) then
  return redis.error_reply('DEADLINE the append arrived after its deadline: nothing appended')
end
local out = {}
for i = 4, #ARGV, 2 do
  if redis.call('SET', ARGV[2] .. ARGV[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], '*', 'e', ARGV[i + 1])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One event as delivered: the broker's id (to acknowledge), its position, the payload."""

    entry_id: str
    seq: int  # grows with the stream: idempotent application compares it
    payload: bytes | None  # None: the entry has no `e` field (not written by `append`)
    fields: tuple[tuple[bytes, bytes], ...] = ()  # the entry's fields when `payload` is None
    partition: int = 0  # the partition (stream) it was read from

    def describe(self) -> bytes:
        """The entry as stored, for a dead letter: its payload, or its fields as JSON."""
        if self.payload is not None:
            return self.payload
        return orjson.dumps({k.decode(errors="replace"): v.decode(errors="replace")
                             for k, v in self.fields})


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """What /readyz reads: the backlog, a marker that moves when the processor does, dead letters."""

    backlog: int  # entries appended and not yet acknowledged
    progress: object  # changes whenever the group reads or acknowledges; None without a group
    dead_letters: int  # entries in the dead-letter stream


@dataclass(frozen=True, slots=True)
class Rebalance:
    """What `rebalance` changed: partitions taken (recover them first), lost, or to give up."""

    acquired: frozenset[int] = frozenset()
    lost: frozenset[int] = frozenset()  # another reader holds it now (this one stalled)
    to_release: frozenset[int] = frozenset()  # more than this reader's share: flush, release

    def __bool__(self) -> bool:
        return bool(self.acquired or self.lost or self.to_release)


NO_CHANGE = Rebalance()


class EventStream(Protocol):
    """What the API appends to and the processor reads from."""

    def append(self, events: list[tuple[str, bytes]], partition_keys: list[str] | None = None
               ) -> list[bool]:
        """Append (event id, payload) pairs; True where new, False where the id was seen.
        `partition_keys` (each event's hashed user) choose the partition of a partitioned stream."""
        ...

    def rebalance(self) -> Rebalance:
        """Keep this reader's share of the partitions (renew, take, give up leases when due)."""
        ...

    def release(self, partitions: set[int]) -> None:
        """Give up these partitions (after acknowledging what was read from them)."""
        ...

    def leave(self) -> None:
        """This reader stops: give every partition up now, so the others take them at once."""
        ...

    def read(self, count: int, block_ms: int) -> list[StreamEntry]:
        """Up to `count` entries never delivered to this group; waits up to `block_ms`."""
        ...

    def claim_abandoned(self) -> int:
        """Take over entries a dead reader took and never acknowledged; return how many."""
        ...

    def pending(self, count: int, after: str = "0") -> list[StreamEntry]:
        """This reader's entries delivered but never acknowledged (a crash), after `after`."""
        ...

    def ack(self, entries: list[StreamEntry]) -> None:
        """The entries are fully processed: never deliver them again."""
        ...

    def backlog(self) -> int:
        """Entries appended but not yet acknowledged."""
        ...

    def dead_letter(self, entry: StreamEntry, error: str) -> None:
        """Move an entry that cannot be processed to the dead-letter stream and acknowledge it."""
        ...

    def status(self) -> StreamStatus:
        """Backlog, progress marker and dead letters, in one look."""
        ...

    def dedupe_started(self) -> float | None:
        """When the dedupe memory started (Unix seconds) if less than one TTL ago, else None.

        Ids appended before then may be forgotten (the broker lost its memory, e.g. a restart
        with nothing on disk): a retried one is new to the stream, so check the log instead.
        None: every id appended within the TTL is remembered.
        """
        ...

    def ping(self) -> bool:
        """The broker answers."""
        ...


def hash_tagged(key: str) -> str:
    """`key` with a Redis Cluster hash tag: `{key}` hashes to the slot of `key` itself, so keys
    named `{key}:suffix` live on the node of `key` (a key that has a tag keeps it)."""
    opening = key.find("{")
    if opening >= 0 and key.find("}", opening + 2) > opening:
        return key
    return "{" + key + "}"


def stream_clients(connection: str | RedisConfig, append_timeout_s: float = 2.0
                   ) -> tuple[redis.Redis, redis.Redis]:
    """(reader, writer) clients for the stream's Redis, from the online store's settings (TLS,
    ACL user, Cluster, Sentinel): the writer without retries and with a short timeout."""
    config = parse_redis(connection) if isinstance(connection, str) else connection
    reader = sync_client(config, socket_timeout=10, socket_connect_timeout=5)
    # redis-py retries a timed-out command 3 times by default: a hung Redis then held an
    # append for 4 x the timeout, and each retry sent the batch again.
    writer = sync_client(config, socket_timeout=append_timeout_s + _REPLY_MARGIN_S,
                         socket_connect_timeout=append_timeout_s, retry=Retry(NoBackoff(), 0))
    return reader, writer


def _seq(entry_id: str) -> int:
    ms, _, n = entry_id.partition("-")
    return int(ms) * 1_000_000 + int(n)


_REPLY_MARGIN_S = 1.0  # the writer waits this long past the deadline for a reply
_CLOCK_CHECK_S = 60.0  # how often the writer re-measures Redis's clock against its own


class RedisEventStream:
    """A Redis Stream with one consumer group; this instance reads as `consumer`.

    `append` either appends within `append_timeout_s` or raises StreamUnavailable with nothing
    appended: the script carries a deadline on Redis's clock and refuses to run after it, and
    the writer's connection (no retries) waits past that deadline for the reply. The one gap
    left, Redis stopping between running the script and sending its reply, is covered by the
    event ids: the retried batch reports those events as duplicates.
    """

    def __init__(self, connection: str | RedisConfig, stream: str,
                 group: str = "feastflow-stream", consumer: str = "processor-1",
                 dedupe_ttl_seconds: int = 3600, claim_idle_ms: int = 60_000,
                 append_timeout_s: float = 2.0,
                 clients: tuple[redis.Redis, redis.Redis] | None = None, partition: int = 0
                 ) -> None:
        # `clients`: (reader, writer) shared by the partitions of one stream (one pool each)
        self.client, self.writer = clients or stream_clients(connection, append_timeout_s)
        self.stream, self.group, self.consumer = stream, group, consumer
        self.dedupe_ttl_seconds = dedupe_ttl_seconds
        self.claim_idle_ms = claim_idle_ms
        self.append_timeout_s = append_timeout_s
        # Every key of this stream shares its hash slot (Redis Cluster: the append script and
        # the dead-letter transaction touch several keys, which must live on one node).
        tag = hash_tagged(stream)
        self._id_prefix = f"{tag}:seen:"
        self.dead_key = f"{tag}:dead"
        self.dedupe_since_key = f"{tag}:dedupe_since"
        self.partition = partition
        self._append_once = self.writer.register_script(_APPEND_ONCE)
        self._group_ready = False
        self._acks = 0
        self.group_resets = 0  # times the group was found missing and recreated
        self._clock_offset_ms: float | None = None  # Redis's clock minus ours
        self._clock_checked = 0.0

    def _ensure_group(self, client: redis.Redis | None = None) -> None:
        if self._group_ready:
            return
        try:  # from 0: events appended before the first processor started are not skipped
            (client or self.client).xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    def _with_group(self, command: Callable[[], Any]) -> Any:
        # Redis restarted with nothing on disk (or the key was deleted) drops the group: every
        # read would fail with NOGROUP forever. Recreate it once and run the command again.
        self._ensure_group()
        try:
            return command()
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
        self._group_ready = False
        self._ensure_group()
        self.group_resets += 1
        log.warning("event stream %s: consumer group %s was gone (Redis restarted empty?); "
                    "recreated it from the oldest entry the stream holds", self.stream, self.group)
        return command()

    def append(self, events: list[tuple[str, bytes]], partition_keys: list[str] | None = None
               ) -> list[bool]:
        """Append new event ids, atomically skip seen ones; within `append_timeout_s` or
        StreamUnavailable with nothing appended (one stream: `partition_keys` are not needed)."""
        if not events:
            return []
        try:
            flags = self._append_once(keys=[self.stream], args=self.append_args(events))
        except redis.RedisError as e:
            self._clock_offset_ms = None  # a fresh connection measures again
            raise StreamUnavailable(f"event stream {self.stream} unavailable: {e}") from e
        return [bool(f) for f in flags]

    def append_args(self, events: list[tuple[str, bytes]]) -> list[str | bytes | int]:
        """The append script's arguments for these events, its deadline from now."""
        self._ensure_group(self.writer)
        deadline_ms = int(self._redis_now_ms() + self.append_timeout_s * 1000)
        args: list[str | bytes | int] = [self.dedupe_ttl_seconds, self._id_prefix, deadline_ms]
        for event_id, payload in events:
            args += [event_id, payload]
        return args

    def _redis_now_ms(self) -> float:
        # Redis's clock, estimated from ours: the script compares its deadline with TIME.
        now = time.monotonic()
        if self._clock_offset_ms is None or now - self._clock_checked > _CLOCK_CHECK_S:
            before = time.time()
            seconds, micros = cast(tuple[int, int], self.writer.time())
            after = time.time()
            self._clock_offset_ms = (seconds + micros / 1e6 - (before + after) / 2) * 1000
            self._clock_checked = now
        return time.time() * 1000 + self._clock_offset_ms

    def read(self, count: int, block_ms: int) -> list[StreamEntry]:
        """New entries for this consumer."""
        reply = self._with_group(lambda: self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms or None))
        return self._entries(reply)

    def claim_abandoned(self, min_idle_ms: int | None = None) -> int:
        """Move entries idle for `min_idle_ms` (default `claim_idle_ms`) on other consumers to
        this one."""
        claimed, cursor = 0, "0-0"
        idle = self.claim_idle_ms if min_idle_ms is None else min_idle_ms
        while True:
            cursor, entries, *_ = self._with_group(functools.partial(
                self.client.xautoclaim, self.stream, self.group, self.consumer,
                min_idle_time=idle, start_id=cursor, count=1000))  # (justid
            # would drop the cursor in redis-py)
            claimed += len(entries)
            cursor = cursor.decode() if isinstance(cursor, bytes) else cursor
            if cursor == "0-0":
                return claimed

    def pending(self, count: int, after: str = "0") -> list[StreamEntry]:
        """This consumer's unacknowledged entries with ids after `after`, oldest first."""
        return self._entries(self._with_group(lambda: self.client.xreadgroup(
            self.group, self.consumer, {self.stream: after}, count=count)))

    def ack(self, entries: list[StreamEntry]) -> None:
        """Acknowledge, then now and then trim what every reader has acknowledged."""
        if not entries:
            return
        self.client.xack(self.stream, self.group, *[e.entry_id for e in entries])
        self._acks += 1
        if self._acks % 20 == 0:
            self._trim()

    def _trim(self) -> None:
        # Keep everything from the oldest unacknowledged entry on (one group reads this stream).
        summary = cast(dict[str, Any], self.client.xpending(self.stream, self.group))
        if summary["pending"]:
            floor = summary["min"]
        else:
            groups = {g["name"]: g for g in
                      cast(list[dict[str, Any]], self.client.xinfo_groups(self.stream))}
            floor = groups[self.group.encode()]["last-delivered-id"]
        self.client.xtrim(self.stream, minid=floor, approximate=True)

    def backlog(self) -> int:
        """Entries not yet delivered plus those delivered and not acknowledged."""
        return self.status().backlog

    def dead_letter(self, entry: StreamEntry, error: str) -> None:
        """XADD the entry, the error and the time to `<stream>:dead` and XACK it, atomically."""
        record = {"id": entry.entry_id, "entry": entry.describe(), "error": error[:4000],
                  "time": datetime.now(UTC).isoformat()}
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.dead_key, record, maxlen=DEAD_LETTER_MAX, approximate=True)  # type: ignore[arg-type]
        pipe.xack(self.stream, self.group, entry.entry_id)
        pipe.execute()

    def status(self) -> StreamStatus:
        """The group's lag plus pending (the stream's length when no group reads it)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(self.stream)
        pipe.xlen(self.dead_key)
        length, dead = pipe.execute()
        if not length:
            return StreamStatus(0, None, int(dead))
        for group in cast(list[dict[str, Any]], self.client.xinfo_groups(self.stream)):
            if group["name"] == self.group.encode():
                backlog = int(group.get("lag") or 0) + int(group["pending"])
                progress = (group["last-delivered-id"], group.get("entries-read"),
                            group["pending"])
                return StreamStatus(backlog, progress, int(dead))
        return StreamStatus(int(length), None, int(dead))  # no group: nobody reads these

    def dedupe_started(self) -> float | None:
        """When the dedupe memory started (a marker set NX, lost with it), if less than one
        TTL ago."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.dedupe_since_key, time.time(), nx=True)
        pipe.get(self.dedupe_since_key)
        since = float(pipe.execute()[1])
        return since if time.time() - since < self.dedupe_ttl_seconds else None

    def rebalance(self) -> Rebalance:
        """One stream, no leases: readers share it as consumers of its group."""
        return NO_CHANGE

    def release(self, partitions: set[int]) -> None:
        """Nothing to give up."""

    def leave(self) -> None:
        """Nothing to give up."""

    def ping(self) -> bool:
        """The broker answers."""
        try:  # the writer's connection: no retries, a short timeout
            return bool(self.writer.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        """Close the connection pools."""
        self.client.close()
        self.writer.close()

    def _entries(self, reply: list, partition_of: dict[bytes, int] | None = None
                 ) -> list[StreamEntry]:
        # `partition_of`: stream key -> partition, for a read of several partitions' streams
        out = []
        for key, messages in reply or []:
            partition = partition_of[key] if partition_of else self.partition
            for entry_id, fields in messages:
                if fields:  # a trimmed entry comes back without fields
                    decoded = entry_id.decode()
                    payload = fields.get(b"e")
                    out.append(StreamEntry(decoded, _seq(decoded), payload, (), partition)
                               if payload is not None
                               else StreamEntry(decoded, _seq(decoded), None,
                                                tuple(fields.items()), partition))
        return out


class MemoryEventStream:
    """The embedded profile's in-process stream: same interface, lives as long as the process."""

    def __init__(self, dedupe_ttl_seconds: float = 3600.0) -> None:
        self.dedupe_ttl_seconds = dedupe_ttl_seconds
        self._queue: deque[StreamEntry] = deque()
        self._delivered: OrderedDict[str, StreamEntry] = OrderedDict()
        self._seen: dict[str, float] = {}
        self._next = 0
        self._acked = 0
        self._created = time.monotonic()
        self.dead_letters: list[dict[str, object]] = []
        self._ready = threading.Condition()

    def append(self, events: list[tuple[str, bytes]], partition_keys: list[str] | None = None
               ) -> list[bool]:
        """Append new event ids; skip ids seen within the TTL (one partition)."""
        now = time.monotonic()
        flags = []
        with self._ready:
            for event_id, payload in events:
                if self._seen.get(event_id, 0.0) > now:
                    flags.append(False)
                    continue
                self._seen[event_id] = now + self.dedupe_ttl_seconds
                self._next += 1
                self._queue.append(StreamEntry(f"0-{self._next}", self._next, payload))
                flags.append(True)
            if len(self._seen) > 100_000:
                self._seen = {k: t for k, t in self._seen.items() if t > now}
            self._ready.notify_all()
        return flags

    def read(self, count: int, block_ms: int) -> list[StreamEntry]:
        """Up to `count` new entries; waits up to `block_ms` for the first."""
        with self._ready:
            if not self._queue and block_ms:
                self._ready.wait(block_ms / 1000)
            out = [self._queue.popleft() for _ in range(min(count, len(self._queue)))]
            for entry in out:
                self._delivered[entry.entry_id] = entry
            return out

    def claim_abandoned(self) -> int:
        """One process, one reader: nothing to claim."""
        return 0

    def pending(self, count: int, after: str = "0") -> list[StreamEntry]:
        """Delivered and not acknowledged, with ids after `after`."""
        floor = int(after.rpartition("-")[2] or 0)
        with self._ready:
            return [e for e in self._delivered.values() if e.seq > floor][:count]

    def ack(self, entries: list[StreamEntry]) -> None:
        """Forget acknowledged entries."""
        with self._ready:
            for entry in entries:
                if self._delivered.pop(entry.entry_id, None) is not None:
                    self._acked += 1

    def backlog(self) -> int:
        """Entries not yet delivered plus those delivered and not acknowledged."""
        with self._ready:
            return len(self._queue) + len(self._delivered)

    def dead_letter(self, entry: StreamEntry, error: str) -> None:
        """Keep the entry, the error and the time in a list, and acknowledge it."""
        with self._ready:
            self.dead_letters.append({"id": entry.entry_id, "entry": entry.describe(),
                                      "error": error, "time": datetime.now(UTC).isoformat()})
        self.ack([entry])

    def status(self) -> StreamStatus:
        """Backlog, (delivered, acknowledged) as the progress marker, dead letters."""
        with self._ready:
            delivered = self._next - len(self._queue)
            return StreamStatus(len(self._queue) + len(self._delivered), (delivered, self._acked),
                                len(self.dead_letters))

    def dedupe_started(self) -> float | None:
        """When this process started, if less than one TTL ago (a restart forgets every id)."""
        age = time.monotonic() - self._created
        return time.time() - age if age < self.dedupe_ttl_seconds else None

    def rebalance(self) -> Rebalance:
        """One process, one reader: nothing to balance."""
        return NO_CHANGE

    def release(self, partitions: set[int]) -> None:
        """Nothing to give up."""

    def leave(self) -> None:
        """Nothing to give up."""

    def ping(self) -> bool:
        """Always reachable."""
        return True

    def close(self) -> None:
        """Nothing to close."""


# KEYS[1]: a partition's lease; ARGV[1]: this reader's token; ARGV[2]: the lease's new time to
# live in ms, or 0 to give it up. Only the holder renews or deletes its lease.
_RENEW_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""


def partition_of(key: str, partitions: int) -> int:
    """The partition of a partition key (a hashed user id): CRC-32, stable across processes."""
    return zlib.crc32(key.encode()) % partitions


class PartitionLeases:
    """Which partitions this reader owns: a lease per partition in Redis (`SET NX PX`, renewed
    every third of its time) and a fair share of the partitions per live reader.

    Readers say they are alive in a sorted set (score: last heartbeat, Unix ms). Sorted by token,
    the i-th of `live` readers' share is N // live, plus one for the first N % live. A reader under
    its share takes free partitions; one over it gives the extra ones up (once it acknowledged
    what it read from them). A dead reader's leases and heartbeat expire after `lease_ms`: the
    others take its partitions. A reader reads a partition only while its own clock says the
    lease it last renewed has a fifth of its time left.
    """

    def __init__(self, client: redis.Redis, lease_keys: list[str], members_key: str,
                 consumer: str, lease_ms: int, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.client = client
        self.lease_keys = lease_keys
        self.members_key = members_key
        self.token = f"{consumer}:{uuid.uuid4().hex[:12]}"  # a restart is another reader
        self.lease_ms = lease_ms
        self.clock = clock
        self.owned: dict[int, float] = {}  # partition -> when its lease was last renewed
        self._due = 0.0
        self._renew = client.register_script(_RENEW_LEASE)
        self._first = partition_of(consumer, len(lease_keys))  # readers start apart

    def valid(self) -> list[int]:
        """The partitions owned whose lease, by this reader's clock, has time left."""
        now, limit = self.clock(), self.lease_ms * 0.8 / 1000
        return sorted(p for p, renewed in self.owned.items() if now - renewed < limit)

    def maintain(self) -> Rebalance:
        """Every third of the lease time: heartbeat, renew, then take or give up partitions."""
        now = self.clock()
        if now < self._due:
            return NO_CHANGE
        self._due = now + self.lease_ms / 3000
        wall_ms = int(time.time() * 1000)
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self.members_key, {self.token: wall_ms})
        pipe.zremrangebyscore(self.members_key, "-inf", wall_ms - self.lease_ms)
        pipe.zrange(self.members_key, 0, -1)
        members = {m.decode() for m in pipe.execute()[2]} | {self.token}
        lost = set()
        for partition in list(self.owned):
            if self._renew(keys=[self.lease_keys[partition]], args=[self.token, self.lease_ms]):
                self.owned[partition] = now
            else:
                del self.owned[partition]
                lost.add(partition)
        ranked, n = sorted(members), len(self.lease_keys)
        share = n // len(ranked) + (ranked.index(self.token) < n % len(ranked))
        acquired = set()
        for step in range(n):
            partition = (self._first + step) % n
            if len(self.owned) >= share:
                break
            if partition not in self.owned and self.client.set(
                    self.lease_keys[partition], self.token, nx=True, px=self.lease_ms):
                self.owned[partition] = now
                acquired.add(partition)
        extra = sorted(self.owned, reverse=True)[:max(0, len(self.owned) - share)]
        return Rebalance(frozenset(acquired), frozenset(lost), frozenset(extra))

    def release(self, partitions: set[int]) -> None:
        """Delete these leases (if still ours): another reader may take them at once."""
        for partition in partitions:
            if self.owned.pop(partition, None) is not None:
                self._renew(keys=[self.lease_keys[partition]], args=[self.token, 0])

    def leave(self) -> None:
        """Give every lease up and leave the readers' set."""
        self.release(set(self.owned))
        self.client.zrem(self.members_key, self.token)
        self._due = 0.0


class PartitionedEventStream:
    """A use case's events over N Redis Streams, one consumer group each; a user's events always
    go to the same partition (CRC-32 of the hashed user id), so they are read in order. This
    reader reads the partitions whose lease it holds (`PartitionLeases`); on taking one it claims
    every entry the previous holder read and never acknowledged (`claim_abandoned`, no idle
    time: the lease, not the entry's idle time, says the holder is gone).
    """

    def __init__(self, partitions: list[RedisEventStream], leases: PartitionLeases) -> None:
        if len(partitions) != len(leases.lease_keys):
            raise ValueError("one lease per partition")
        self.partitions = partitions
        self.leases = leases
        self._partition_of = {p.stream.encode(): i for i, p in enumerate(partitions)}
        # a cluster holds the partitions on different nodes: one XREADGROUP cannot read them all
        self._per_partition_reads = hasattr(partitions[0].client, "get_nodes")
        self._to_claim: set[int] = set()
        self._pending_at = 0  # position in the owned partitions of `pending`'s cursor
        self._turn = 0

    def append(self, events: list[tuple[str, bytes]], partition_keys: list[str] | None = None
               ) -> list[bool]:
        """Append each event to its partition, one script call per partition of the batch, all
        in one round trip on one server; on StreamUnavailable some partitions may hold their
        events (a retry reports them as duplicates)."""
        if partition_keys is None or len(partition_keys) != len(events):
            raise ValueError("a partitioned stream needs each event's partition key (its user)")
        n = len(self.partitions)
        groups: dict[int, list[int]] = {}
        for index, key in enumerate(partition_keys):
            groups.setdefault(partition_of(key, n), []).append(index)
        if self._per_partition_reads:  # a cluster: each partition's call to its node
            replies = [self.partitions[p].append([events[i] for i in indices])
                       for p, indices in groups.items()]
        else:  # one server: every partition's script call in one round trip
            first = self.partitions[0]

            def send() -> list[Any]:  # (redis-py's Script in a pipeline asks SCRIPT EXISTS
                pipe = first.writer.pipeline(transaction=False)  # first: a round trip more)
                for p, indices in groups.items():
                    stream = self.partitions[p]
                    pipe.evalsha(stream._append_once.sha, 1, stream.stream,
                                 *stream.append_args([events[i] for i in indices]))
                return cast(list[Any], pipe.execute())

            try:
                try:
                    replies = send()
                except redis.exceptions.NoScriptError:  # not loaded: every call refused
                    first.writer.script_load(_APPEND_ONCE)
                    replies = send()
            except redis.RedisError as e:
                for stream in self.partitions:
                    stream._clock_offset_ms = None
                raise StreamUnavailable(f"event stream {first.stream} and its partitions "
                                        f"unavailable: {e}") from e
        flags = [False] * len(events)
        for indices, appended in zip(groups.values(), replies, strict=True):
            for index, flag in zip(indices, appended, strict=True):
                flags[index] = bool(flag)
        return flags

    def rebalance(self) -> Rebalance:
        """Renew, take or give up leases when due; taken partitions are claimed at recovery."""
        change = self.leases.maintain()
        for partition in change.acquired:
            self.partitions[partition]._ensure_group()
        self._to_claim |= change.acquired
        self._to_claim -= change.lost
        return change

    def release(self, partitions: set[int]) -> None:
        """Give these partitions up."""
        self.leases.release(partitions)

    def leave(self) -> None:
        """Give every partition up (a graceful stop)."""
        self.leases.leave()

    def read(self, count: int, block_ms: int) -> list[StreamEntry]:
        """New entries of the partitions held: one XREADGROUP over their streams (a cluster: one
        partition at a time, blocking only when none has anything)."""
        owned = self.leases.valid()
        if not owned:
            time.sleep(block_ms / 1000)
            return []
        if self._per_partition_reads:
            entries = [e for p in owned for e in self.partitions[p].read(count, 0)]
            if entries:
                return entries
            self._turn += 1
            return self.partitions[owned[self._turn % len(owned)]].read(count, block_ms)
        first = self.partitions[owned[0]]
        streams = {self.partitions[p].stream: ">" for p in owned}

        def read() -> Any:
            return first.client.xreadgroup(first.group, first.consumer, streams,  # type: ignore[arg-type]
                                           count=count, block=block_ms or None)

        try:
            reply = read()
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            for partition in owned:  # Redis restarted empty: recreate the groups
                stream = self.partitions[partition]
                stream._group_ready = False
                stream._ensure_group()
                stream.group_resets += 1
            log.warning("event stream: consumer groups were gone (Redis restarted empty?); "
                        "recreated them from the oldest entry each partition holds")
            reply = read()
        return first._entries(reply, self._partition_of)

    def claim_abandoned(self) -> int:
        """Claim what earlier holders of the partitions taken since the last call left pending."""
        claimed = sum(self.partitions[p].claim_abandoned(min_idle_ms=0) for p in
                      sorted(self._to_claim) if p in self.leases.owned)
        self._to_claim.clear()
        return claimed

    def pending(self, count: int, after: str = "0") -> list[StreamEntry]:
        """This reader's unacknowledged entries, partition after partition (`after` "0" starts
        again at the first partition held)."""
        owned = sorted(self.leases.owned)
        if after == "0":
            self._pending_at = 0
        while self._pending_at < len(owned):
            entries = self.partitions[owned[self._pending_at]].pending(count, after)
            if entries:
                return entries
            self._pending_at += 1
            after = "0"
        return []

    def ack(self, entries: list[StreamEntry]) -> None:
        """Acknowledge each entry in its partition."""
        by_partition: dict[int, list[StreamEntry]] = {}
        for entry in entries:
            by_partition.setdefault(entry.partition, []).append(entry)
        for partition, its_entries in by_partition.items():
            self.partitions[partition].ack(its_entries)

    def backlog(self) -> int:
        """Entries not yet acknowledged, in every partition."""
        return self.status().backlog

    def dead_letter(self, entry: StreamEntry, error: str) -> None:
        """Into its partition's dead-letter stream."""
        self.partitions[entry.partition].dead_letter(entry, error)

    def status(self) -> StreamStatus:
        """Every partition's backlog and dead letters summed; progress is all of theirs."""
        statuses = [p.status() for p in self.partitions]
        progress = tuple(s.progress for s in statuses)
        return StreamStatus(sum(s.backlog for s in statuses),
                            None if all(p is None for p in progress) else progress,
                            sum(s.dead_letters for s in statuses))

    def dedupe_started(self) -> float | None:
        """The latest start of a partition's dedupe memory within the TTL (None: none)."""
        started = [t for t in (p.dedupe_started() for p in self.partitions) if t is not None]
        return max(started, default=None)

    def ping(self) -> bool:
        """The broker answers."""
        return self.partitions[0].ping()

    def close(self) -> None:
        """Close the shared connection pools."""
        self.partitions[0].close()


def open_event_stream(settings: Settings, use_case: str) -> EventStream:
    """The profile's stream: a Redis Stream in the Redis profile, in-process in the embedded one."""
    if not settings.online_redis:
        return MemoryEventStream(settings.stream_dedupe_ttl_seconds)
    config = settings.redis()
    clients = stream_clients(config)
    streams = [RedisEventStream(config, settings.event_stream_key(use_case, p),
                                consumer=settings.stream_consumer,
                                dedupe_ttl_seconds=settings.stream_dedupe_ttl_seconds,
                                claim_idle_ms=settings.stream_claim_idle_ms, clients=clients,
                                partition=p)
               for p in range(settings.stream_partitions)]
    if len(streams) == 1:  # one stream, read by the consumers of its group as before
        return streams[0]
    leases = PartitionLeases(clients[0], [f"{hash_tagged(s.stream)}:lease" for s in streams],
                             f"{settings.event_stream_key(use_case)}:readers",
                             settings.stream_consumer, settings.stream_lease_ms)
    return PartitionedEventStream(streams, leases)
