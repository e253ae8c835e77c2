"""What each feature table was last computed from, so that the next run redoes only what new
events change (the nightly job adds a day to a log of months).

A table's record holds the digest of its inputs (its SQL or real-time functions, the spec, the
reference tables, the hash secret) and the event log's fingerprint when it was written: per UTC
day, how many events and the XOR of their ids' hashes. Against today's fingerprint, the first day
that differs is the table's *dirty day*:

- no day differs and the inputs are the same: the table is what a recompute would write; kept;
- a table the spec lists in `features.incremental_tables` (one row per key and `snapshots` row,
  stamped at its `snapshot_ts`, counting events strictly before it) recomputes only the
  snapshots after the dirty day and keeps its rows up to it;
- the real-time tables continue the fold from each entity's saved state when the events of the
  dirty days up to each entity's last folded event are exactly the ones folded before (then
  every other event is later, and the fold appends exactly what a full fold would);
- anything else is computed in full.

Records are written after their table, and a real-time record is dropped before its tables
change: an interrupted run leaves tables that the next run recomputes or keeps correctly.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import msgspec

from feastflow.realtime import EntityState

__all__ = ["FeatureState", "LogFingerprint", "dirty_day", "inputs_digest", "log_fingerprint"]

LogFingerprint = dict[str, list[int]]  # "YYYY-MM-DD" -> [events, XOR of hash(event id)]
STATE_DIR = "_state"  # beside the tables; not a *.parquet glob of the tables
_STATES = msgspec.msgpack.Decoder(dict[str, EntityState])


def log_fingerprint(con: duckdb.DuckDBPyConnection, timestamp: str, event_id: str
                    ) -> LogFingerprint:
    """Per UTC day of `all_events`: its number of events and the XOR of their ids' hashes."""
    rows = con.execute(
        f'SELECT strftime(date_trunc(\'day\', "{timestamp}"), \'%Y-%m-%d\'), count(*), '
        f'bit_xor(hash("{event_id}")) FROM all_events GROUP BY 1').fetchall()
    return {day: [int(n), int(x)] for day, n, x in rows}


def dirty_day(before: LogFingerprint, now: LogFingerprint) -> str | None:
    """The first day whose events differ between the two fingerprints, or None."""
    return next((day for day in sorted(before.keys() | now.keys())
                 if before.get(day) != now.get(day)), None)


def inputs_digest(*parts: object) -> str:
    """A digest of what a table is computed from (text, bytes, JSON-able values)."""
    digest = hashlib.sha256()
    for part in parts:
        raw = part if isinstance(part, bytes) else json.dumps(part, sort_keys=True,
                                                             default=str).encode()
        digest.update(len(raw).to_bytes(8, "little") + raw)
    return digest.hexdigest()


def file_digest(path: Path) -> list[object]:
    """What says a file changed: its name, size and modification time."""
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


class FeatureState:
    """The records of one use case's tables (`<tables>/_state/state.json`) and the real-time
    fold's saved entity states."""

    def __init__(self, tables_dir: Path) -> None:
        self.folder = tables_dir / STATE_DIR
        self.path = self.folder / "state.json"
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                self.records = json.loads(self.path.read_text())["tables"]
            except (ValueError, KeyError, TypeError):  # unreadable: every table in full
                self.records = {}

    def dirty_day(self, name: str, inputs: str, now: LogFingerprint, table: Path
                  ) -> tuple[bool, str | None]:
        """(known, day): known is False when the table must be computed in full; else the
        first day whose events changed since it was written (None: nothing changed)."""
        record = self.records.get(name)
        if record is None or record.get("inputs") != inputs or not table.exists():
            return False, None
        return True, dirty_day(record["log"], now)

    def log(self, name: str) -> LogFingerprint:
        """The fingerprint of the log the table was last written from."""
        return self.records[name]["log"]

    def record(self, name: str, inputs: str, log: LogFingerprint, **extra: Any) -> None:
        """The table is written: from these inputs and this log."""
        self.records[name] = {"inputs": inputs, "log": log, **extra}
        self._save()

    def forget(self, name: str) -> None:
        """The table is about to change: until recorded again, it counts as unknown."""
        if self.records.pop(name, None) is not None:
            self._save()

    def save_entity_states(self, states: dict[str, EntityState]) -> str:
        """Write the fold's entity states to a new file; its name (for the record)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"entity_states.{uuid.uuid4().hex}.msgpack"
        staged = self.folder / f".{name}.tmp"
        staged.write_bytes(msgspec.msgpack.encode(states))
        os.replace(staged, self.folder / name)
        return name

    def entity_states(self, name: str) -> dict[str, EntityState] | None:
        """The entity states saved under `name`, or None when the file is gone."""
        path = self.folder / name
        return _STATES.decode(path.read_bytes()) if path.exists() else None

    def drop_entity_states(self, keep: str | None) -> None:
        """Remove saved entity states other than `keep`."""
        for old in self.folder.glob("entity_states.*.msgpack"):
            if old.name != keep:
                old.unlink(missing_ok=True)

    def _save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        staged = self.folder / ".state.json.tmp"
        staged.write_text(json.dumps({"written": datetime.now().isoformat(),
                                      "tables": self.records}))
        os.replace(staged, self.path)
