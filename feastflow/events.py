"""Raw events checked against a use case's data contract (`event_log` in its model.yaml).

One implementation of the rules for every way in: `feastflow ingest`, `POST /v1/events` and the
stream all call `validate_events`, so a bad value gets the same `row N: field: reason` wherever it
arrives. The contract says each column's type, whether it may be empty, its range, its allowed
values or pattern; nothing here knows a use case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd

from feastflow.spec import ColumnSpec, EventLogSpec

_PANDAS_DTYPES = {"string": "string", "int": "int64", "float": "float64", "bool": "bool"}
_NULLABLE_DTYPES = {"string": "string", "int": "Int64", "float": "float64", "bool": "boolean"}
TIMESTAMP_DTYPE = "datetime64[us, UTC]"


@dataclass(frozen=True)
class RowError:
    """One rejected value: which row (1-based, as in the file), which field, and why."""

    row: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.field}: {self.reason}"


def event_columns(contract: EventLogSpec) -> list[str]:
    """The event log's columns, in the contract's order."""
    return list(contract.columns)


def event_dtypes(contract: EventLogSpec) -> dict[str, str]:
    """Each column's pandas dtype after validation."""
    out = {}
    for name, column in contract.columns.items():
        if column.type == "timestamp":
            out[name] = TIMESTAMP_DTYPE
        else:
            out[name] = (_NULLABLE_DTYPES if column.nullable else _PANDAS_DTYPES)[column.type]
    return out


def unknown_field_reason(contract: EventLogSpec) -> str:
    """Why a field outside the contract is refused (ingest and the API say the same)."""
    return "unknown field; expected one of " + ", ".join(contract.columns)


def _to_bool(series: pd.Series) -> pd.Series:
    mapping = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    return series.map(
        lambda v: v if isinstance(v, bool | np.bool_) else mapping.get(str(v).strip().lower())
    )


def _is_empty(series: pd.Series) -> np.ndarray:
    if series.dtype != object and not pd.api.types.is_string_dtype(series.dtype):
        return series.isna().to_numpy()  # numbers, flags, times: only missing is empty
    return _is_blank(series.astype("string").str.strip())


def _is_blank(text: pd.Series) -> np.ndarray:
    return np.asarray((text.isna() | (text == "")).fillna(True), dtype=bool)


def _bound(value: float | None) -> str:
    return "inf" if value is None else f"{value:g}"


def _one_of(values: list[Any]) -> str:
    return "must be one of " + ", ".join(str(v) for v in values)


class _Checker:
    """Rejects values column by column; a row keeps only its first error."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.bad = np.zeros(len(frame), dtype=bool)
        self.rows = np.arange(1, len(frame) + 1)
        self.errors: list[RowError] = []

    def reject(self, mask: Any, column: str, reason: str) -> None:
        mask = np.asarray(mask, dtype=bool) & ~self.bad
        self.errors.extend(RowError(int(row), column, reason) for row in self.rows[mask])
        self.bad |= mask

    def string(self, name: str, column: ColumnSpec) -> None:
        text = self.frame[name].astype("string").str.strip()
        empty = _is_blank(text)
        if not column.nullable:
            self.reject(empty, name, "required value is empty")
        if column.pattern is not None:
            hint = column.pattern_hint or f"match {column.pattern}"
            matches = text.fillna("").str.fullmatch(re.compile(column.pattern))
            self.reject(~empty & ~np.asarray(matches, dtype=bool), name, f"must be {hint}")
        if column.allowed is not None:
            allowed = [str(v) for v in column.allowed]
            self.reject(~empty & ~np.asarray(text.isin(allowed).fillna(False), dtype=bool), name,
                        _one_of(column.allowed))
        self.frame[name] = text.where(~empty, None)

    def number(self, name: str, column: ColumnSpec) -> None:
        raw = self.frame[name]
        empty = _is_empty(raw)
        values = pd.to_numeric(raw.where(~empty, None), errors="coerce")
        self.reject(values.isna() & ~empty, name, "not a number")
        if not column.nullable:
            self.reject(empty, name, "required value is empty")
        out_of_range = np.zeros(len(values), dtype=bool)
        if column.min is not None:
            out_of_range |= np.asarray((values < column.min).fillna(False), dtype=bool)
        if column.max is not None:
            out_of_range |= np.asarray((values > column.max).fillna(False), dtype=bool)
        if column.min is not None or column.max is not None:
            self.reject(out_of_range, name,
                        f"out of range [{_bound(column.min)}, {_bound(column.max)}]")
        if column.type == "int":
            self.reject(np.asarray((values.notna() & (values % 1 != 0)), dtype=bool), name,
                        "must be a whole number")
        if column.allowed is not None:
            allowed = pd.to_numeric(pd.Series(column.allowed), errors="coerce").to_numpy()
            self.reject(values.notna() & ~values.isin(allowed), name, _one_of(column.allowed))
        self.frame[name] = values

    def boolean(self, name: str, column: ColumnSpec) -> None:
        raw = self.frame[name]
        empty = _is_empty(raw) if column.nullable else np.zeros(len(raw), dtype=bool)
        values = _to_bool(raw.where(~empty, None))
        self.reject(values.isna() & ~empty, name, "must be true or false")
        self.frame[name] = values

    def timestamp(self, name: str, column: ColumnSpec, now: pd.Timestamp,
                  max_future: pd.Timedelta | None) -> None:
        raw = self.frame[name]
        empty = _is_empty(raw)
        stamps = pd.to_datetime(raw.where(~empty, None), errors="coerce", utc=True, format="mixed")
        if not column.nullable:
            self.reject(empty, name, "required value is empty")
        self.reject(stamps.isna() & ~empty, name, "not a valid ISO 8601 timestamp")
        if max_future is not None:
            self.reject(np.asarray((stamps > now + max_future).fillna(False), dtype=bool), name,
                        f"more than {_describe(max_future)} in the future")
        self.frame[name] = stamps.dt.tz_convert("UTC").astype(TIMESTAMP_DTYPE)


def _describe(delta: pd.Timedelta) -> str:
    days = delta / pd.Timedelta(days=1)
    if days == 1:
        return "one day"
    return f"{days:g} days" if days >= 1 else f"{delta.total_seconds():g} seconds"


def validate_events(raw: pd.DataFrame, contract: EventLogSpec, now: pd.Timestamp | None = None
                    ) -> tuple[pd.DataFrame, list[RowError]]:
    """Check every row against the contract; return the clean typed rows and one error per bad
    row (its first bad value). A missing required column or an unknown one rejects the input."""
    errors: list[RowError] = []
    columns = contract.columns
    for name in raw.columns:
        if name not in columns:
            errors.append(RowError(0, str(name), unknown_field_reason(contract)))
    missing = [n for n, c in columns.items() if n not in raw.columns and not c.nullable]
    for name in missing:
        errors.append(RowError(0, name, "required field is missing from the input"))
    if errors:
        return raw.iloc[0:0], errors

    frame = raw.reset_index(drop=True).copy()
    for name in columns:
        if name not in frame:
            frame[name] = None
    check = _Checker(frame)
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    # strings first (ids, categories), then time, then numbers and flags: the order in which a
    # row with several bad values reports the first one
    order = sorted(columns, key=lambda n: {"string": 0, "timestamp": 1}.get(columns[n].type, 2))
    for name in order:
        column = columns[name]
        if column.type == "string":
            check.string(name, column)
        elif column.type in ("int", "float"):
            check.number(name, column)
        elif column.type == "bool":
            check.boolean(name, column)
        else:
            future = pd.Timedelta(contract.max_future) if name == contract.timestamp else None
            check.timestamp(name, column, now, future)
    event_id = frame[contract.event_id]
    check.reject(event_id.notna() & event_id.duplicated(keep="first"), contract.event_id,
                 f"duplicate {contract.event_id} within the input")

    clean = frame.loc[~check.bad, list(columns)].astype(event_dtypes(contract))
    errors = sorted(check.errors, key=lambda e: (e.row, e.field))
    return clean.reset_index(drop=True), errors


def encode_events(clean: pd.DataFrame, contract: EventLogSpec) -> list[tuple[str, bytes]]:
    """Validated events as (event id, JSON bytes) for the event stream; times as Unix microseconds."""
    names = event_columns(contract)
    frame = clean[names].astype(object).where(clean[names].notna(), None)
    for name, column in contract.columns.items():
        if column.type == "timestamp":
            stamps = clean[name].astype(TIMESTAMP_DTYPE)
            micros = stamps.astype("int64").where(stamps.notna(), None)
            frame[name] = micros.astype(object).where(stamps.notna(), None).tolist()
    return [(str(record[contract.event_id]), orjson.dumps(record))
            for record in frame.to_dict("records")]


def decode_events(payloads: list[bytes], contract: EventLogSpec) -> pd.DataFrame:
    """The event log's typed frame from stream payloads (inverse of `encode_events`)."""
    names = event_columns(contract)
    frame = pd.DataFrame([orjson.loads(p) for p in payloads], columns=names)
    for name, column in contract.columns.items():
        if column.type == "timestamp":
            frame[name] = pd.to_datetime(frame[name].astype("Int64"), unit="us", utc=True)
    return frame.astype(event_dtypes(contract))
