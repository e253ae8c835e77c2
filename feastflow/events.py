"""The raw event schema (one row per unlock) and its validation rules, shared by ingest and the API."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd

LOCATIONS = ("home", "work", "commute", "other")
NETWORKS = ("wifi", "cellular", "offline")
APP_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,63}$")
MAX_SESSION_SECONDS = 24 * 3600
MAX_FUTURE = pd.Timedelta(days=1)

# name -> (type, required, description); the README renders this table.
EVENT_SCHEMA: dict[str, tuple[str, bool, str]] = {
    "event_id": ("string", True, "unique id of the unlock event (idempotency key)"),
    "user_id": ("string", True, "raw user id; hashed with a keyed hash at ingest"),
    "timestamp": ("timestamp (UTC)", True, "moment of the unlock; ISO 8601, naive means UTC"),
    "app": ("string", True, "the app opened right after the unlock, e.g. `mail`"),
    "secs_since_prev_unlock": ("float >= 0", False, "seconds since the previous unlock"),
    "session_seconds": ("float 0..86400", True, "how long the phone stayed unlocked"),
    "location": ("one of home, work, commute, other", True, "coarse location"),
    "battery": ("int 0..100", True, "battery level in percent"),
    "charging": ("bool", True, "phone is charging"),
    "network": ("one of wifi, cellular, offline", True, "network type"),
    "os_version": ("string", True, "operating system version, e.g. `android-14`"),
}
EVENT_COLUMNS = list(EVENT_SCHEMA)
# the event log's column types after validation
EVENT_DTYPES = {
    "event_id": "string",
    "user_id": "string",
    "app": "string",
    "location": "string",
    "network": "string",
    "os_version": "string",
    "battery": "int64",
    "charging": "bool",
    "session_seconds": "float64",
    "secs_since_prev_unlock": "float64",
}


@dataclass(frozen=True)
class RowError:
    """One rejected value: which row (1-based, as in the file), which field, and why."""

    row: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.field}: {self.reason}"


def unknown_field_reason() -> str:
    """Why a field outside the schema is refused (ingest and the API say the same)."""
    return "unknown field; expected one of " + ", ".join(EVENT_COLUMNS)


def _to_bool(series: pd.Series) -> pd.Series:
    mapping = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    return series.map(
        lambda v: v if isinstance(v, bool | np.bool_) else mapping.get(str(v).strip().lower())
    )


def validate_events(
    raw: pd.DataFrame, now: pd.Timestamp | None = None
) -> tuple[pd.DataFrame, list[RowError]]:
    """Check every row against the schema; return the clean typed rows and one error per bad value."""
    errors: list[RowError] = []
    unknown = [c for c in raw.columns if c not in EVENT_SCHEMA]
    for column in unknown:
        errors.append(RowError(0, column, unknown_field_reason()))
    missing = [c for c, (_, required, _) in EVENT_SCHEMA.items() if c not in raw.columns and required]
    for column in missing:
        errors.append(RowError(0, column, "required field is missing from the input"))
    if missing or unknown:
        return raw.iloc[0:0], errors

    df = raw.reset_index(drop=True).copy()
    if "secs_since_prev_unlock" not in df:
        df["secs_since_prev_unlock"] = np.nan
    bad = np.zeros(len(df), dtype=bool)
    rows = np.arange(1, len(df) + 1)

    def reject(mask: pd.Series | np.ndarray, column: str, reason: str) -> None:
        mask = np.asarray(mask, dtype=bool) & ~bad
        for row in rows[mask]:
            errors.append(RowError(int(row), column, reason))
        bad[mask] = True

    for column in ("event_id", "user_id", "app", "os_version", "location", "network"):
        text = df[column].astype("string").str.strip()
        reject(text.isna() | (text == ""), column, "required value is empty")
        df[column] = text
    reject(~df["app"].fillna("").str.fullmatch(APP_PATTERN), "app",
           "must be 1-64 lowercase letters, digits, '_', '.', '-'")
    reject(~df["location"].isin(LOCATIONS), "location", f"must be one of {', '.join(LOCATIONS)}")
    reject(~df["network"].isin(NETWORKS), "network", f"must be one of {', '.join(NETWORKS)}")

    timestamps = pd.to_datetime(df["timestamp"], errors="coerce", utc=True, format="mixed")
    reject(timestamps.isna(), "timestamp", "not a valid ISO 8601 timestamp")
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    reject(timestamps > now + MAX_FUTURE, "timestamp", "more than one day in the future")
    df["timestamp"] = timestamps.dt.tz_convert("UTC").astype("datetime64[us, UTC]")

    for column, low, high in (
        ("session_seconds", 0, MAX_SESSION_SECONDS),
        ("secs_since_prev_unlock", 0, None),
        ("battery", 0, 100),
    ):
        values = pd.to_numeric(df[column], errors="coerce")
        required = EVENT_SCHEMA[column][1]
        not_number = values.isna() & df[column].notna()
        reject(not_number, column, "not a number")
        if required:
            reject(df[column].isna(), column, "required value is empty")
        out_of_range = values < low
        if high is not None:
            out_of_range |= values > high
        reject(out_of_range, column, f"out of range [{low}, {high if high is not None else 'inf'}]")
        df[column] = values
    reject(df["battery"].notna() & (df["battery"] % 1 != 0), "battery", "must be a whole number")

    charging = _to_bool(df["charging"])
    reject(charging.isna(), "charging", "must be true or false")
    df["charging"] = charging

    duplicated = df["event_id"].notna() & df["event_id"].duplicated(keep="first")
    reject(duplicated, "event_id", "duplicate event_id within the input")

    clean = df.loc[~bad, EVENT_COLUMNS].copy()
    clean = clean.astype(EVENT_DTYPES)
    errors.sort(key=lambda e: (e.row, e.field))
    return clean.reset_index(drop=True), errors


def encode_events(clean: pd.DataFrame) -> list[tuple[str, bytes]]:
    """Validated events as (event id, JSON bytes) for the event stream; time as Unix microseconds."""
    frame = clean[EVENT_COLUMNS].astype(object).where(clean[EVENT_COLUMNS].notna(), None)
    frame["timestamp"] = clean["timestamp"].astype("datetime64[us, UTC]").astype("int64").tolist()
    return [(record["event_id"], orjson.dumps(record)) for record in frame.to_dict("records")]


def decode_events(payloads: list[bytes]) -> pd.DataFrame:
    """The event log's typed frame from stream payloads (inverse of `encode_events`)."""
    frame = pd.DataFrame([orjson.loads(p) for p in payloads], columns=EVENT_COLUMNS)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"].astype("int64"), unit="us", utc=True)
    return frame.astype({**EVENT_DTYPES, "timestamp": "datetime64[us, UTC]"})
