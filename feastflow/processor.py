"""The stream processor: events -> real-time features -> online store, and events -> offline
event log. `feastflow stream` runs it (Redis profile); the embedded server runs it on a thread,
which is why it lives in the core package and not in pipelines/.

Per batch read from the stream: fold each event into its user's state with the use case's
real-time functions (the ones the batch tables use), write the changed rows online to the views
the use case's push sources feed (`feastflow/realtime_online.py`: on Redis, every table of the
batch in one pipelined round trip with the shared writer's encoding), save the states. Every
`log_flush_seconds`, on a thread of its own: append the events to the Parquet event log
(all-or-nothing) and only then acknowledge them.

At-least-once delivery, exactly-once effect: an entry acknowledged is in the log; an entry not
acknowledged is re-read after a crash. States remember the last stream position applied per user,
so re-read entries do not count twice; the log is checked for re-read entries before appending,
and for every entry while the stream's dedupe memory is younger than its TTL (a broker restarted
empty forgot which ids it took: a client's retry must not be logged twice).

Faults:
- an entry that cannot be decoded goes to the stream's dead-letter stream; the rest go on;
- the state store lost its states (Redis restarted with nothing on disk, seen through its marker,
  while running or at start): what this processor holds is appended to the log, then the states
  are rebuilt from the log and the online store is restored: the batch views re-materialized
  (`restore_online`) and the latest real-time rows pushed again;
- any other failure (broker or store down) is retried with exponential backoff and jitter, one
  log line when a streak starts and one when it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import pandas as pd
import redis
from feast import FeatureStore
from redis.backoff import EqualJitterBackoff

from feastflow.errors import InputError
from feastflow.event_log import existing_event_ids, has_events, read_events, write_partitions
from feastflow.events import decode_events
from feastflow.realtime import EntityState, RealtimeFeatures, Row
from feastflow.realtime_online import FeastRowWriter, RedisRowWriter, RowWriter, Tables
from feastflow.redis_config import sync_client
from feastflow.settings import Settings
from feastflow.spec import ModelSpec
from feastflow.store import open_store
from feastflow.stream import EventStream, StreamEntry, open_event_stream

log = logging.getLogger(__name__)

WriteOnline = Callable[[Tables], object]  # {real-time table: rows}, in order -> written online
SEEDED_MARKER = "_processor_seeded"  # beside the log: a processor seeded states from it once
RESTORE_ROWS = 10_000  # rows per online write when the states' rows are written again
CLOCK_MARGIN = pd.Timedelta(minutes=1)  # between the clocks of intake and processor hosts


class StatesLost(RuntimeError):
    """The state store no longer holds the states this process saw there (Redis restarted)."""


class StateStore(Protocol):
    """Where the processor keeps each entity's real-time state between batches and restarts."""

    def get(self, entities: Iterable[str]) -> dict[str, EntityState]:
        """The states of these entities (fresh ones for unknown entities); raises StatesLost
        when the store was seeded as seen by this process and has since lost everything."""
        ...

    def put(self, states: dict[str, EntityState]) -> None:
        """Save these states, all or none."""
        ...

    def is_seeded(self) -> bool:
        """States were built from the offline event log once."""
        ...

    def mark_seeded(self) -> None:
        """Remember that states were built from the offline event log."""
        ...

    def seeding(self) -> AbstractContextManager[object]:
        """Held while seeding: one processor of several seeds, the others wait, then see it."""
        ...


class RedisStateStore:
    """States as msgpack in one Redis hash per use case (one HMGET / HSET per batch)."""

    def __init__(self, client: redis.Redis, use_case: str) -> None:
        self.client = client
        self.key = f"feastflow:{use_case}:realtime_state"
        self._seen_seeded = False  # this process saw the marker: its absence now means a reset

    def get(self, entities: Iterable[str]) -> dict[str, EntityState]:
        """The states of these entities, with the seeding marker checked in the same round trip."""
        names = list(entities)
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(self.key + ":seeded")
        if names:
            pipe.hmget(self.key, names)
        seeded, *rest = pipe.execute()
        if self._seen_seeded and not seeded:
            raise StatesLost(f"{self.key} lost its states (Redis restarted with nothing on disk?)")
        raw = rest[0] if names else []
        return {n: EntityState.decode(r) for n, r in zip(names, raw, strict=True)}

    def put(self, states: dict[str, EntityState]) -> None:
        """One HSET of every state."""
        if states:
            self.client.hset(self.key, mapping={k: s.encode() for k, s in states.items()})

    def is_seeded(self) -> bool:
        """The seeding marker is set."""
        seeded = bool(self.client.exists(self.key + ":seeded"))
        self._seen_seeded = self._seen_seeded or seeded
        return seeded

    def mark_seeded(self) -> None:
        """Set the seeding marker."""
        self.client.set(self.key + ":seeded", "1")
        self._seen_seeded = True

    def seeding(self) -> AbstractContextManager[object]:
        """A Redis lock (released after 10 minutes if its holder died seeding)."""
        return self.client.lock(self.key + ":seeding", timeout=600, sleep=0.1)


class MemoryStateStore:
    """States in a dict (embedded profile), stored encoded so callers never share objects."""

    def __init__(self) -> None:
        self._states: dict[str, bytes] = {}
        self._seeded = False

    def get(self, entities: Iterable[str]) -> dict[str, EntityState]:
        """The states of these entities."""
        return {e: EntityState.decode(self._states.get(e)) for e in entities}

    def put(self, states: dict[str, EntityState]) -> None:
        """Save encoded copies."""
        self._states.update({k: s.encode() for k, s in states.items()})

    def is_seeded(self) -> bool:
        """Seeded once in this process."""
        return self._seeded

    def mark_seeded(self) -> None:
        """Remember the seeding."""
        self._seeded = True

    def seeding(self) -> AbstractContextManager[object]:
        """One process: nothing to lock."""
        return nullcontext()


@dataclass
class ProcessorStats:
    """What the processor did since it started."""

    applied: int = 0  # events that changed a state (first delivery)
    redelivered: int = 0  # events read again and recognised as applied
    rows_pushed: int = 0
    logged: int = 0  # events appended to the offline log
    already_logged: int = 0  # re-read events found in the log already
    batches: int = 0
    failures: int = 0
    dead_letters: int = 0  # entries that could not be decoded, moved to the dead-letter stream
    resets: int = 0  # times the states were found lost and rebuilt from the log
    started: float = field(default_factory=time.monotonic)


class StreamProcessor:
    """Reads the stream, updates real-time features online, appends events to the offline log."""

    def __init__(self, realtime: RealtimeFeatures, stream: EventStream, states: StateStore,
                 write_online: WriteOnline, events_dir: Path, batch_events: int = 2000, block_ms: int = 50,
                 log_flush_seconds: float = 2.0, retry_seconds: float = 0.2,
                 retry_max_seconds: float = 10.0, reset_check_seconds: float = 1.0,
                 restore_online: Callable[[], None] | None = None) -> None:
        self.realtime = realtime
        self.stream = stream
        self.states = states
        self.write_online = write_online
        self.events_dir = events_dir
        self.batch_events = batch_events
        self.block_ms = block_ms
        self.log_flush_seconds = log_flush_seconds
        self.retry_seconds = retry_seconds
        self.retry_max_seconds = retry_max_seconds
        self._backoff = EqualJitterBackoff(cap=retry_max_seconds, base=retry_seconds)
        self.reset_check_seconds = reset_check_seconds
        # Re-materializes the batch views after the online store was lost with the states (the
        # Redis profile); None where the online store outlives the states (embedded).
        self.restore_online = restore_online
        self._seeded = False  # this processor seeded or found seeded states
        self._recovery_due = False  # partitions taken whose pending entries are not yet redone
        self._next_reset_check = 0.0
        self.stats = ProcessorStats()
        self._unlogged: list[pd.DataFrame] = []
        self._unacked: list[StreamEntry] = []
        self._in_hand: list[StreamEntry] | None = None
        self._flushing_frames: list[pd.DataFrame] = []  # taken by a flush that has not finished
        self._flushing_entries: list[StreamEntry] = []
        self._queue_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._log_in_background = False
        self._last_flush = time.monotonic()

    def seed_from_log(self) -> int:
        """Once per state store: start every user's state from the offline event log.

        When a processor seeded from this log before (its marker is beside the log) the store
        was lost, not new: the online store lost its rows with it and is restored too.
        """
        if self.states.is_seeded():
            self._seeded = True
            return 0
        with self.states.seeding():  # several processors start together: one seeds
            if self.states.is_seeded():
                self._seeded = True
                return 0
            # (embedded: the states live in memory and are new at every start, the online
            # store not)
            reset = (self.restore_online is not None
                     and (self.events_dir / SEEDED_MARKER).exists())
            if reset:
                log.error("stream processor: the state store is empty but a processor seeded "
                          "it from %s before (Redis restarted with nothing on disk?): rebuilding "
                          "the states and the online store from the event log", self.events_dir)
            return self._seed(restore=reset)

    def _seed(self, restore: bool) -> int:
        seeded = 0
        if has_events(self.events_dir):
            rt = self.realtime
            frame = read_events(self.events_dir, [rt.entity_key, rt.value_key, rt.event_id_key,
                                                  rt.timestamp_key])
            if restore:
                self._restore_online(frame)
            states = self.realtime.states_from_log(frame)
            self.states.put(states)
            seeded = len(states)
        elif restore:
            self._restore_online(None)
        self.states.mark_seeded()
        self.events_dir.mkdir(parents=True, exist_ok=True)
        (self.events_dir / SEEDED_MARKER).write_text(datetime.now(UTC).isoformat() + "\n")
        self._seeded = True
        return seeded

    def _restore_online(self, events: pd.DataFrame | None) -> None:
        # Batch views first, then the real-time rows: Feast keeps a key's newest row, and the
        # log's fold is at least as new as the tables the batch views were computed from.
        if self.restore_online is not None:
            try:
                self.restore_online()
            except Exception as e:
                log.error("stream processor: CANNOT restore the batch feature views online (%s: "
                          "%s): answers miss them until `feastflow materialize` is run",
                          type(e).__name__, e)
        if events is None:
            return
        rt = self.realtime
        latest: dict[tuple[str, str, str], Row] = {}
        for row in rt.batch_rows(events):  # per key in time order: the last is the newest
            latest[(row.table, row.values[rt.entity_key], row.values.get(rt.item_key, ""))] = row
        rows = list(latest.values())
        for start in range(0, len(rows), RESTORE_ROWS):
            chunk = rows[start:start + RESTORE_ROWS]
            self.write_online({table: [r for r in chunk if r.table == table]
                               for table in rt.push_sources})
        log.warning("stream processor: pushed the latest real-time rows of %d entities again",
                    events[rt.entity_key].nunique())

    def replay_after_reset(self) -> None:
        """The states were lost while running: log what is in hand, then seed and restore."""
        self.stats.resets += 1
        log.error("stream processor: the state store lost its states (Redis restarted with "
                  "nothing on disk?): rebuilding them and the online store from the event log %s; "
                  "events appended and not yet read before the restart are lost unless Redis "
                  "persists them (appendonly yes)", self.events_dir)
        self.flush_log()  # the log must hold every event applied so far before it is folded
        with self.states.seeding():
            if self.states.is_seeded():  # another processor rebuilt them meanwhile
                self._seeded = True
                return
            self._seed(restore=self.restore_online is not None)

    def _check_reset(self) -> None:
        # A restarted Redis shows no error while idle: look at the states' marker now and then.
        now = time.monotonic()
        if not self._seeded or now < self._next_reset_check:
            return
        if not self.states.is_seeded():
            self.replay_after_reset()
        self._next_reset_check = now + self.reset_check_seconds

    def run(self, stop: threading.Event, on_progress: Callable[[ProcessorStats], None] | None = None
            ) -> ProcessorStats:
        """Seed, recover what a crash left, then process until `stop` is set; flush on the way out.

        The offline log is appended by a thread of its own, so its Parquet writes (py-spy at
        2,000 events/s: ~0.1 s every 2 s) never hold up the online features.
        """
        self._retrying(stop, self.seed_from_log)
        self._retrying(stop, self.recover)

        def write_log() -> None:
            while not stop.wait(self.log_flush_seconds):
                self._retrying(stop, self.flush_log)

        writer = threading.Thread(target=write_log, name="event-log-writer", daemon=True)
        self._log_in_background = True
        writer.start()
        try:
            while not stop.is_set():
                self._retrying(stop, self.step)
                if on_progress is not None:
                    on_progress(self.stats)
        finally:
            writer.join()
            self._log_in_background = False
            self._retrying(stop, self.flush_log, attempts_after_stop=5)
            try:  # the other processors take this one's partitions now, not after its leases
                self.stream.leave()
            except Exception as e:
                log.warning("stream processor: could not give its partitions up (%s: %s); the "
                            "others take them when the leases expire", type(e).__name__, e)
        return self.stats

    def _decode(self, entries: list[StreamEntry]) -> tuple[list[StreamEntry], pd.DataFrame]:
        """The entries that decode and their frame; the others go to the dead-letter stream."""
        try:
            frame = self._decode_checked(entries)
            return entries, frame
        except Exception:
            pass  # one at a time, to find the bad ones (rare: append writes valid payloads)
        good, frames = [], []
        for entry in entries:
            try:
                frames.append(self._decode_checked([entry]))
                good.append(entry)
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
                self.stream.dead_letter(entry, error)
                self.stats.dead_letters += 1
                log.error("stream processor: entry %s cannot be decoded (%s): moved to the "
                          "dead-letter stream", entry.entry_id, error)
        if not frames:
            return [], decode_events([], self.realtime.contract)
        return good, pd.concat(frames, ignore_index=True)

    def _decode_checked(self, entries: list[StreamEntry]) -> pd.DataFrame:
        rt = self.realtime
        for entry in entries:
            if entry.payload is None:
                raise ValueError("the entry has no 'e' field (the event's JSON payload)")
        frame = decode_events([e.payload for e in entries if e.payload is not None], rt.contract)
        keys = [rt.entity_key, rt.value_key, rt.event_id_key, rt.timestamp_key]
        missing = [k for k in keys if frame[k].isna().any()]
        if missing:
            raise ValueError(f"empty {', '.join(missing)}: the fold needs every key")
        return frame

    def _apply(self, entries: list[StreamEntry], frame: pd.DataFrame,
               already_logged: set[str] | frozenset[str] = frozenset()) -> None:
        if not entries:
            return
        try:
            self.handle(entries, frame, already_logged)
        except StatesLost:  # Redis restarted under us: rebuild, then apply to the right states
            self.replay_after_reset()
            self.handle(entries, frame, already_logged)

    def recover(self) -> int:
        """Re-process entries taken before and never acknowledged (a crash); return how many."""
        self.stream.claim_abandoned()
        recovered, after = 0, "0"
        while True:
            entries = self.stream.pending(self.batch_events, after)
            if not entries:
                break
            after = entries[-1].entry_id
            good, frame = self._decode(entries)
            logged = existing_event_ids(self.events_dir, frame[self.realtime.event_id_key],
                                        self.realtime.event_id_key) if good else set()
            self.stats.already_logged += len(logged)
            self._apply(good, frame, already_logged=logged)
            recovered += len(entries)
        self.flush_log()
        return recovered

    def step(self) -> int:
        """One read, one fold-and-push; append to the log when it is due. Returns events read."""
        self._check_reset()
        if self._in_hand is None:  # a batch that failed is retried before anything new is read
            self._rebalance()
            self._in_hand = self.stream.read(self.batch_events, self.block_ms)
        entries = self._in_hand
        if entries:
            self._apply(*self._decode(entries))
        self._in_hand = None
        due = time.monotonic() - self._last_flush >= self.log_flush_seconds
        if due and self._unacked and not self._log_in_background:
            self.flush_log()
        return len(entries)

    def _rebalance(self) -> None:
        # Partitions change hands only with nothing in hand: what was read from them is logged
        # and acknowledged first, and a partition taken is recovered before it is read.
        change = self.stream.rebalance()
        if not change:
            if self._recovery_due:  # a recovery that failed is retried before reading on
                self.recover()
                self._recovery_due = False
            return
        if change.lost:
            log.warning("stream processor: partitions %s are held by another processor now "
                        "(this one stalled past its lease)", sorted(change.lost))
        self.flush_log()
        if change.to_release:
            self.stream.release(set(change.to_release))
            log.info("stream processor: gave partitions %s up", sorted(change.to_release))
        if change.acquired:
            log.info("stream processor: took partitions %s", sorted(change.acquired))
            self._recovery_due = True
            self.recover()
            self._recovery_due = False

    def handle(self, entries: list[StreamEntry], frame: pd.DataFrame,
               already_logged: set[str] | frozenset[str] = frozenset()) -> None:
        """Fold the entries into states, push the changed rows, save the states; queue the log."""
        rt = self.realtime
        entity_ids = frame[rt.entity_key].tolist()
        states = self.states.get(dict.fromkeys(entity_ids))
        unix_us = frame[rt.timestamp_key].astype("int64").tolist()
        rows = []
        for entry, entity, event_id, item, us in zip(
                entries, entity_ids, frame[rt.event_id_key].tolist(), frame[rt.value_key].tolist(),
                unix_us, strict=True):
            state = states[entity]
            applied = state.applied
            rows.extend(rt.apply(state, entity, entry.seq, event_id, item, us))
            if state.applied > applied:
                self.stats.applied += 1
            else:
                self.stats.redelivered += 1
        by_table: Tables = {table: [] for table in rt.push_sources}  # entity table last
        for row in rows:
            by_table[row.table].append(row)
        self.write_online(by_table)  # one call for the batch
        self.states.put(states)
        self.stats.rows_pushed += len(rows)
        self.stats.batches += 1
        ids = frame[rt.event_id_key]
        fresh = frame[~ids.isin(already_logged)] if already_logged else frame
        with self._queue_lock:
            self._unlogged.append(fresh)
            self._unacked.extend(entries)

    def flush_log(self) -> int:
        """Append the queued events to the offline log (all-or-nothing), then acknowledge them."""
        with self._flush_lock:  # one writer at a time; what a failed call held is retried first
            with self._queue_lock:
                self._flushing_frames += self._unlogged
                self._flushing_entries += self._unacked
                self._unlogged, self._unacked = [], []
            frames = [f for f in self._flushing_frames if len(f)]
            written = 0
            if frames:
                timestamp = self.realtime.timestamp_key
                events = self._not_logged(pd.concat(frames, ignore_index=True))
                events = events.sort_values(timestamp, kind="stable")
                if len(events):
                    write_partitions(events, self.events_dir, timestamp)
                written = len(events)
            self._flushing_frames = []  # in the log now: a failed ack must not write them again
            self.stats.logged += written
            if self._flushing_entries:
                self.stream.ack(self._flushing_entries)
                self._flushing_entries = []
            self._last_flush = time.monotonic()
            return written

    def _not_logged(self, events: pd.DataFrame) -> pd.DataFrame:
        """Drop events twice in hand, and, while the stream's dedupe memory may have lost ids
        (younger than its TTL), those already in the log (read in their own partitions only).

        Only an event appended before the memory started can be a forgotten retry, and intake
        refused it if it was timed past its arrival + the contract's `max_future`: events timed
        later than the memory's start + `max_future` (+ a margin for clocks) skip the log read.
        """
        rt = self.realtime
        events = events.drop_duplicates(rt.event_id_key, ignore_index=True)
        started = self.stream.dedupe_started()
        if started is None:
            return events
        horizon = pd.Timestamp(started, unit="s", tz="UTC") + pd.Timedelta(
            rt.contract.max_future) + CLOCK_MARGIN
        times = pd.to_datetime(events[rt.timestamp_key], utc=True)
        suspect = (times <= horizon).to_numpy()
        if not suspect.any():
            return events
        logged = existing_event_ids(self.events_dir, events.loc[suspect, rt.event_id_key],
                                    rt.event_id_key, timestamps=times[suspect])
        if not logged:
            return events
        self.stats.already_logged += len(logged)
        log.warning("stream processor: %d events appended again after the stream forgot their "
                    "ids (a client retry after a broker restart?) are in the log already: "
                    "skipped", len(logged))
        return events[~events[rt.event_id_key].isin(logged)]

    def retry_delay(self, failures: int) -> float:
        """Seconds before attempt `failures` + 1: exponential from `retry_seconds` up to
        `retry_max_seconds`, with equal jitter (processors that failed together spread out)."""
        return self._backoff.compute(failures)

    def _retrying(self, stop: threading.Event, work: Callable[[], object],
                  attempts_after_stop: int = 0) -> None:
        # A broker or store outage must not lose what is in hand: retry the same work, with
        # backoff, saying so once when the streak starts and once when it ends.
        name = getattr(work, "__name__", "work")
        failures, failed_after_stop, started = 0, 0, 0.0
        while True:
            try:
                work()
            except Exception as e:
                failures += 1
                self.stats.failures += 1
                if failures == 1:
                    started = time.monotonic()
                    log.error("stream processor: %s failed (%s: %s); retrying with backoff up "
                              "to %.0f s, quiet until it recovers", name, type(e).__name__, e,
                              self.retry_max_seconds)
                    log.debug("stream processor: %s failed", name, exc_info=True)
                if stop.is_set():
                    failed_after_stop += 1
                    if failed_after_stop > attempts_after_stop:
                        log.error("stream processor: stopping with %s failing (%s: %s): what "
                                  "was not acknowledged is read again at the next start", name,
                                  type(e).__name__, e)
                        return
                    time.sleep(self.retry_delay(failures))
                else:
                    stop.wait(self.retry_delay(failures))
                continue
            if failures:
                log.info("stream processor: %s recovered after %d failures in %.1f s", name,
                         failures, time.monotonic() - started)
            return


class BackgroundProcessor:
    """A StreamProcessor on a daemon thread, started on first use (the embedded server's)."""

    def __init__(self, processor: StreamProcessor) -> None:
        self.processor = processor
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        """Start the thread unless it runs (seeding from the log waits for the first event)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self.processor.run, args=(self._stop,),
                                                name="stream-processor", daemon=True)
                self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the batch in hand; what it read is appended to the log first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)


def online_rows_writer(settings: Settings, realtime: RealtimeFeatures, store: FeatureStore
                       ) -> RowWriter:
    """The shared Redis writer (one pipelined round trip per batch) where the online store is
    one Redis server; Feast's own online write elsewhere (SQLite, Redis Cluster or Sentinel)."""
    if settings.online_redis:
        try:
            return RedisRowWriter.for_store(realtime, store, settings.redis())
        except InputError as e:
            log.info("stream processor: writing online through Feast (%s)", e)
    return FeastRowWriter(realtime, store)


def build_processor(settings: Settings, spec: ModelSpec, stream: EventStream | None = None,
                    states: StateStore | None = None) -> StreamProcessor:
    """A processor for the settings' profile: Redis stream and states, or in-process ones."""
    from feast.data_source import PushSource

    store = open_store(settings, spec.name)
    realtime = RealtimeFeatures(spec)
    rows_writer = online_rows_writer(settings, realtime, store)

    def restore_batch_views() -> None:
        # Feast's materialize over all time: the latest row of every key of each batch view (the
        # pushed views are rebuilt from the event log by the processor itself).
        views = [v.name for v in store.list_feature_views()
                 if not isinstance(v.stream_source, PushSource)]
        if views:
            store.materialize(start_date=datetime(1970, 1, 1, tzinfo=UTC),
                              end_date=datetime.now(UTC), feature_views=views)
            log.warning("stream processor: re-materialized %d batch feature views: %s",
                        len(views), ", ".join(views))

    if stream is None:
        stream = open_event_stream(settings, spec.name)
    if states is None:
        states = (RedisStateStore(sync_client(settings.redis()), spec.name)
                  if settings.online_redis else MemoryStateStore())
    redis_profile = settings.online_redis
    return StreamProcessor(realtime, stream, states, rows_writer.write,
                           settings.events_dir(spec.name),
                           batch_events=settings.stream_batch_events,
                           block_ms=settings.stream_block_ms,
                           log_flush_seconds=settings.stream_log_flush_seconds,
                           restore_online=restore_batch_views if redis_profile else None)
