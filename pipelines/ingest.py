"""Ingest raw events: validate, hash user ids, append to the Parquet event log all-or-nothing."""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feastflow.events import EVENT_COLUMNS, RowError, validate_events
from feastflow.privacy import hash_user_id

STAGING = "_staging"


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


def read_raw(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file of raw events, every value as it is in the file."""
    if not path.is_file():
        raise FileNotFoundError(f"no such input file: {path}")
    suffixes = "".join(path.suffixes).lower()
    if suffixes.endswith(".parquet"):
        return pq.read_table(path).to_pandas()
    if suffixes.endswith((".csv", ".csv.gz")):
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    raise ValueError(f"{path}: unsupported format; give a .csv, .csv.gz or .parquet file")


def hash_users(events: pd.DataFrame, secret: str) -> pd.DataFrame:
    """Replace raw user ids by their keyed hash (each distinct id hashed once)."""
    hashed = {raw: hash_user_id(raw, secret) for raw in events["user_id"].unique()}
    return events.assign(user_id=events["user_id"].map(hashed).astype("string"))


def existing_event_ids(events_dir: Path, candidate_ids: pd.Series) -> set[str]:
    """Which of these event ids are already in the log."""
    if not any(events_dir.glob("date=*/hour=*/*.parquet")):
        return set()
    con = duckdb.connect()
    con.register("incoming", pa.table({"event_id": candidate_ids.astype(str).to_numpy()}))
    found = con.execute(
        f"""SELECT DISTINCT l.event_id FROM read_parquet({sql_string(events_glob(events_dir))},
            hive_partitioning = false) l JOIN incoming i USING (event_id)"""
    ).fetchall()
    return {row[0] for row in found}


def write_partitions(events: pd.DataFrame, events_dir: Path) -> list[str]:
    """Write events as one new file per date/hour partition; all files land or none do."""
    batch = uuid.uuid4().hex[:12]
    staging = events_dir / STAGING / batch
    staging.mkdir(parents=True, exist_ok=True)
    timestamps = events["timestamp"]
    keys = pd.DataFrame({"date": timestamps.dt.strftime("%Y-%m-%d"), "hour": timestamps.dt.hour})
    planned: list[tuple[Path, Path]] = []
    try:
        for (date, hour), index in keys.groupby(["date", "hour"]).groups.items():
            part = f"date={date}/hour={hour:02d}"
            staged = staging / part.replace("/", "_") / f"part-{batch}.parquet"
            staged.parent.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pandas(events.loc[index], preserve_index=False)
            pq.write_table(table, staged)
            with open(staged, "rb") as f:
                os.fsync(f.fileno())
            planned.append((staged, events_dir / part / f"part-{batch}.parquet"))
        moved: list[Path] = []
        try:
            for staged, final in planned:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, final)
                moved.append(final)
        except BaseException:
            for final in moved:  # roll back: a failed call leaves no partition half-written
                final.unlink(missing_ok=True)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted({str(final.parent.relative_to(events_dir)) for _, final in planned})


def ingest_frame(raw: pd.DataFrame, events_dir: Path, secret: str, strict: bool = False,
                 now: pd.Timestamp | None = None) -> IngestReport:
    """Validate, hash and append; with `strict`, any bad row rejects the whole call."""
    clean, errors = validate_events(raw, now=now)
    report = IngestReport(rows_read=len(raw), rows_written=0, duplicates_skipped=0, errors=errors)
    if clean.empty or (strict and errors):
        return report
    seen = existing_event_ids(events_dir, clean["event_id"])
    fresh = clean[~clean["event_id"].isin(seen)]
    report.duplicates_skipped = len(clean) - len(fresh)
    if fresh.empty:
        return report
    hashed = hash_users(fresh, secret)[EVENT_COLUMNS].sort_values("timestamp", kind="stable")
    report.partitions = write_partitions(hashed, events_dir)
    report.rows_written = len(hashed)
    return report


def ingest_file(path: Path, events_dir: Path, secret: str, strict: bool = False) -> IngestReport:
    """Ingest one CSV or Parquet file of raw events into the event log."""
    return ingest_frame(read_raw(path), events_dir, secret, strict=strict)


def sql_string(value: str | Path) -> str:
    """A SQL string literal (quotes doubled), for paths spliced into DuckDB statements."""
    return "'" + str(value).replace("'", "''") + "'"


def events_glob(events_dir: Path) -> str:
    """The DuckDB glob that reads the whole event log."""
    return f"{events_dir}/date=*/hour=*/*.parquet"
