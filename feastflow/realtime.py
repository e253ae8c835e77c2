"""Real-time features as a fold over events, shared by the batch tables and the stream processor.

The use case's module (`feature_repo/<use case>/realtime.py`, named by model.yaml) says WHAT each
feature is; this module says how events reach it. `RealtimeFeatures.apply` folds one event into an
entity's state and returns the rows to write. `batch_tables` runs the same fold over the whole
event log, in time order, so the tables training reads hold exactly what the stream pushes.

Idempotent by construction: an event whose stream position is not past the entity's last applied
one, or that is already in the window, changes nothing (at-least-once delivery, exactly-once
effect). Online rows are stamped so that their event time strictly grows per key, because Feast's
Redis writer skips a row whose event time is not newer than the stored one.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa

from feastflow.plugins import use_case_module
from feastflow.spec import ModelSpec, RealtimeSpec

WindowEvent = tuple[int, str, Any]  # (unix microseconds, event id, value), by time then id


class EntityState(msgspec.Struct, array_like=True):
    """What the fold remembers about one entity (a user); kept by the stream processor."""

    window: list[WindowEvent] = msgspec.field(default_factory=list)
    item_last_us: dict[str, int] = msgspec.field(default_factory=dict)
    features: dict[str, Any] | None = None  # the last entity row written
    stamped_us: int = 0  # its event time; the next one is later
    last_seq: int = -1  # stream position of the last applied event
    applied: int = 0  # events applied, each exactly once

    def encode(self) -> bytes:
        """msgpack bytes (the processor's state store keeps these)."""
        return _ENCODER.encode(self)

    @staticmethod
    def decode(raw: bytes | None) -> EntityState:
        """The state from its bytes; a fresh state for None."""
        return EntityState() if raw is None else _DECODER.decode(raw)


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(EntityState)


@dataclass(frozen=True, slots=True)
class Row:
    """One row for a real-time table: its keys and features, stamped at `unix_us`."""

    table: str
    unix_us: int
    values: dict[str, Any]


class RealtimeFeatures:
    """A use case's real-time tables: the fold, its tables and push sources."""

    def __init__(self, spec: ModelSpec) -> None:
        if spec.realtime is None:
            raise ValueError(f"use case {spec.name!r} declares no `realtime` section in model.yaml")
        self.spec: RealtimeSpec = spec.realtime
        self.contract = spec.event_log
        self.entity_key = spec.event_log.entity
        self.item_key = spec.event_log.item or ""
        # what each window event carries: the item chosen, or another column (an amount)
        self.value_key = self.spec.value or self.item_key
        self.items_as_text = not self.spec.value  # ids (maybe ints) as text; values as is
        self.event_id_key = spec.event_log.event_id
        self.timestamp_key = spec.event_log.timestamp
        if not self.value_key or self.value_key not in spec.event_log.columns:
            raise ValueError(f"use case {spec.name!r}: real-time features fold a value per event: "
                             "declare realtime.value (an event_log column) or event_log.item")
        if self.spec.item_table is not None and not self.item_key:
            raise ValueError(f"use case {spec.name!r}: realtime.item_table needs event_log.item")
        self.window_us = (self.spec.window_seconds or 0) * 1_000_000
        module = use_case_module(spec, self.spec.module)
        self.entity_table = self.spec.entity_table.table
        self._entity_fn: Callable[[list[WindowEvent]], dict[str, Any]] = _function(
            module, self.spec.entity_table.function)
        self.item_table = self.spec.item_table.table if self.spec.item_table else None
        self._item_fn: Callable[[int], dict[str, Any]] | None = (
            _function(module, self.spec.item_table.function) if self.spec.item_table else None)

    @property
    def push_sources(self) -> dict[str, str]:
        """Table name -> the Feast push source that feeds its view online, entity table last.

        The processor pushes in this order: once the entity table shows an event (its freshness
        feature), every row that event produced is online.
        """
        tables = [self.spec.item_table, self.spec.entity_table]
        return {t.table: t.push_source for t in tables if t is not None}

    def apply(self, state: EntityState, entity: str, seq: int, event_id: str, item: Any,
              unix_us: int) -> list[Row]:
        """Fold one event (`item`: its value, `realtime.value`) into `state` (in place); return
        the rows whose values changed."""
        if seq <= state.last_seq:
            return []  # delivered again after a crash: already applied
        state.last_seq = seq
        window = state.window
        event = (unix_us, event_id, str(item) if self.items_as_text else item)
        if not window or event > window[-1]:
            window.append(event)
        else:  # out of order: into its place in time, unless it is there already
            at = bisect.bisect_left(window, event)
            if at < len(window) and window[at] == event:
                return []  # the same event twice: applied once
            window.insert(at, event)
        state.applied += 1
        if len(window) > self.spec.window_events:
            del window[0]
        if self.window_us:  # the newest event always stays: it is what the entity did last
            oldest = window[-1][0] - self.window_us
            while window[0][0] <= oldest:
                del window[0]
        rows = []
        features = self._entity_fn(window)
        if features != state.features:
            state.features = features
            state.stamped_us = max(window[-1][0], state.stamped_us + 1)
            rows.append(Row(self.entity_table, state.stamped_us,
                            {self.entity_key: entity, **features}))
        if self._item_fn is not None and unix_us > state.item_last_us.get(item, -1):
            state.item_last_us[item] = unix_us
            rows.append(Row(self.item_table, unix_us,  # type: ignore[arg-type]
                            {self.entity_key: entity, self.item_key: item,
                             **self._item_fn(unix_us)}))
        return rows

    def batch_tables(self, events: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Fold the whole event log (entity, item, event_id, timestamp) through `apply`."""
        return self.frames(self.batch_rows(events))

    def batch_rows(self, events: pd.DataFrame) -> list[Row]:
        """The rows of `batch_tables`, in fold order (per key, oldest first); with
        `entity_history: false`, the entity table's latest row per entity only."""
        return self._fold(events)[0]

    def frames(self, rows: Iterable[Row]) -> dict[str, pd.DataFrame]:
        """Rows grouped into one frame per table (every table, empty when it has no row)."""
        by_table: dict[str, list[Row]] = {table: [] for table in self.push_sources}
        for row in rows:
            by_table[row.table].append(row)
        return {table: self.rows_frame(table_rows, table) for table, table_rows in by_table.items()}

    def states_from_log(self, events: pd.DataFrame) -> dict[str, EntityState]:
        """Each entity's state after the whole event log: where the stream processor starts."""
        return self._fold(events)[1]

    def fold(self, events: pd.DataFrame, states: dict[str, EntityState] | None = None
             ) -> tuple[list[Row], dict[str, EntityState]]:
        """The rows of `events` folded in time order per entity, from `states` (updated in
        place; entities without one start afresh), and every entity's state after them."""
        return self._fold(events, states)

    def _fold(self, events: pd.DataFrame, states: dict[str, EntityState] | None = None
              ) -> tuple[list[Row], dict[str, EntityState]]:
        ordered = events.sort_values([self.entity_key, self.timestamp_key, self.event_id_key],
                                     kind="stable")
        entities = ordered[self.entity_key].to_numpy(dtype=object)
        items = ordered[self.value_key].to_numpy(dtype=object)
        event_ids = ordered[self.event_id_key].to_numpy(dtype=object)
        unix_us = _unix_us(ordered[self.timestamp_key])
        rows: list[Row] = []
        states = {} if states is None else states
        history = self.spec.entity_history
        state, current = EntityState(), None
        for entity, item, event_id, us in zip(entities, items, event_ids, unix_us.tolist(),
                                              strict=True):
            if entity != current:
                current = entity
                state = states.setdefault(entity, EntityState())
            applied = self.apply(state, entity, state.last_seq + 1, event_id, item, us)
            rows.extend(applied if history else
                        [r for r in applied if r.table != self.entity_table])
        for entity, state in states.items():
            state.last_seq = -1  # positions were the log's; the stream's start afresh
            if not history and state.features is not None:
                rows.append(Row(self.entity_table, state.stamped_us,
                                {self.entity_key: entity, **state.features}))
        return rows, states

    def rows_frame(self, rows: Iterable[Row], table: str) -> pd.DataFrame:
        """Rows of one table as the frame Feast's push and the batch table take."""
        rows = list(rows)
        frame = pd.DataFrame([r.values for r in rows], columns=self._columns(table))
        stamps = pd.to_datetime(np.array([r.unix_us for r in rows], dtype="int64"), unit="us",
                                utc=True).astype("datetime64[us, UTC]")
        frame["event_timestamp"] = stamps
        frame["created_timestamp"] = stamps
        return frame

    def rows_table(self, rows: Iterable[Row], table: str) -> pa.Table:
        """Rows of one table as Arrow, the columns and types `rows_frame` gives Feast, without
        pandas (the stream processor's online write: no frame per batch)."""
        rows = list(rows)
        columns = {name: pa.array([r.values[name] for r in rows])
                   for name in self._columns(table)}
        stamps = pa.array([r.unix_us for r in rows], pa.timestamp("us", tz="UTC"))
        return pa.table({**columns, "event_timestamp": stamps, "created_timestamp": stamps})

    def _columns(self, table: str) -> list[str]:
        probe = [(0, "", "")]
        if table == self.entity_table:
            return [self.entity_key, *self._entity_fn(probe)]
        assert self._item_fn is not None
        return [self.entity_key, self.item_key, *self._item_fn(0)]


def _unix_us(timestamps: pd.Series) -> np.ndarray:
    return timestamps.dt.tz_convert("UTC").astype("datetime64[us, UTC]").to_numpy(
        dtype="datetime64[us]").astype("int64")


def _function(module: Any, name: str) -> Callable[..., dict[str, Any]]:
    fn = getattr(module, name, None)
    if not callable(fn):
        raise AttributeError(f"{module.__file__} has no function {name!r} (named in model.yaml)")
    return fn
