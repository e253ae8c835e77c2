"""The raw event log: Parquet partitioned by date/hour, user ids hashed, appended all-or-nothing.

Written by `feastflow ingest` and by the stream processor; read by the batch features.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feastflow.privacy import hash_user_id

STAGING = "_staging"


def hash_users(events: pd.DataFrame, secret: str) -> pd.DataFrame:
    """Replace raw user ids by their keyed hash (each distinct id hashed once)."""
    hashed = {raw: hash_user_id(raw, secret) for raw in events["user_id"].unique()}
    return events.assign(user_id=events["user_id"].map(hashed).astype("string"))


def has_events(events_dir: Path) -> bool:
    """The log holds at least one partition file."""
    return any(events_dir.glob("date=*/hour=*/*.parquet"))


def read_events(events_dir: Path, columns: list[str]) -> pd.DataFrame:
    """These columns of the whole log (the log must not be empty: see `has_events`)."""
    return duckdb.connect().execute(
        f"SELECT {', '.join(columns)} FROM read_parquet({sql_string(events_glob(events_dir))}, "
        "hive_partitioning = false)").df()


def existing_event_ids(events_dir: Path, candidate_ids: pd.Series) -> set[str]:
    """Which of these event ids are already in the log."""
    if not has_events(events_dir):
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


def sql_string(value: str | Path) -> str:
    """A SQL string literal (quotes doubled), for paths spliced into DuckDB statements."""
    return "'" + str(value).replace("'", "''") + "'"


def events_glob(events_dir: Path) -> str:
    """The DuckDB glob that reads the whole event log."""
    return f"{events_dir}/date=*/hour=*/*.parquet"
