"""Ingest raw events: validate against the use case's contract, hash its personal columns, append
to its Parquet event log all-or-nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from feastflow.event_log import existing_event_ids, hash_columns, write_partitions
from feastflow.events import RowError, event_columns, validate_events
from feastflow.spec import EventLogSpec


@dataclass
class IngestReport:
    """What one ingest call did: rows read, written, skipped as already present, rejected."""

    rows_read: int
    rows_written: int
    duplicates_skipped: int
    errors: list[RowError] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)

    @property
    def rows_rejected(self) -> int:
        """Number of distinct input rows that failed validation (0 means a whole-input error)."""
        return len({e.row for e in self.errors})


def is_text(path: Path) -> bool:
    """Whether the file is text (CSV), whose numbers and flags arrive as strings."""
    return "".join(path.suffixes).lower().endswith((".csv", ".csv.gz"))


def read_raw(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file of raw events, every value as it is in the file."""
    if not path.is_file():
        raise FileNotFoundError(f"no such input file: {path}")
    if "".join(path.suffixes).lower().endswith(".parquet"):
        return pq.read_table(path).to_pandas()
    if is_text(path):
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    raise ValueError(f"{path}: unsupported format; give a .csv, .csv.gz or .parquet file")


def ingest_frame(raw: pd.DataFrame, contract: EventLogSpec, events_dir: Path, secret: str,
                 strict: bool = False, now: pd.Timestamp | None = None, text: bool = False
                 ) -> IngestReport:
    """Validate, hash and append; with `strict`, any bad row rejects the whole call.

    `text`: the frame was read from text (CSV), so numbers and flags are parsed from strings;
    a typed frame must carry each value in its type (see `validate_events`)."""
    clean, errors = validate_events(raw, contract, now=now, text=text)
    report = IngestReport(rows_read=len(raw), rows_written=0, duplicates_skipped=0, errors=errors)
    if clean.empty or (strict and errors):
        return report
    ids = contract.event_id
    seen = existing_event_ids(events_dir, clean[ids], ids)
    fresh = clean[~clean[ids].astype(str).isin(seen)]
    report.duplicates_skipped = len(clean) - len(fresh)
    if fresh.empty:
        return report
    hashed = hash_columns(fresh, secret, contract.hashed_columns)[event_columns(contract)]
    hashed = hashed.sort_values(contract.timestamp, kind="stable")
    report.partitions = write_partitions(hashed, events_dir, contract.timestamp)
    report.rows_written = len(hashed)
    return report


def ingest_file(path: Path, contract: EventLogSpec, events_dir: Path, secret: str,
                strict: bool = False) -> IngestReport:
    """Ingest one CSV or Parquet file of raw events into the use case's event log."""
    return ingest_frame(read_raw(path), contract, events_dir, secret, strict=strict,
                        text=is_text(path))
