"""Raw events checked against a use case's data contract (`event_log` in its model.yaml).

One implementation of the rules for every way in: `feastflow ingest`, `POST /v1/events` and the
stream all call `validate_events`, so a bad value gets the same `row N: field: reason` wherever it
arrives. The contract says each column's type, whether it may be empty, its range, its allowed
values or pattern; nothing here knows a use case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
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


_TRUE_TEXT = frozenset({"true", "1"})
_FALSE_TEXT = frozenset({"false", "0"})
# ISO 8601 date and time with a zone (Z or an offset): a time without one is ambiguous
_ISO_WITH_ZONE = r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)"
_INT64_LIMIT = 2**63
# what a value is, as a small code (a file may have millions of values)
EMPTY, STRING, NUMBER, BOOLEAN, DATETIME, OBJECT, ARRAY, OTHER = range(8)
_INFERRED_KINDS = {"string": STRING, "integer": NUMBER, "floating": NUMBER,
                   "mixed-integer-float": NUMBER, "boolean": BOOLEAN, "empty": EMPTY}
_KIND_NAMES = {STRING: "a string", NUMBER: "a number", BOOLEAN: "a boolean",
               DATETIME: "a datetime", OBJECT: "an object", ARRAY: "an array",
               OTHER: "a value of another type"}


def _kind(value: Any) -> int:
    """What a single value is, as JSON would name it (bool before int: a bool is an int)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return EMPTY
    if isinstance(value, bool | np.bool_):
        return BOOLEAN
    if isinstance(value, float | np.floating) and np.isnan(value):
        return EMPTY
    if isinstance(value, int | float | np.number):
        return NUMBER
    if isinstance(value, str):
        return STRING
    if isinstance(value, datetime):
        return DATETIME
    if isinstance(value, dict):
        return OBJECT
    if isinstance(value, list | tuple | np.ndarray):
        return ARRAY
    return OTHER


def _kinds(series: pd.Series) -> np.ndarray:
    """Each value's kind; typed columns at once, object columns value by value."""
    dtype = series.dtype
    for test, kind in ((pd.api.types.is_bool_dtype, BOOLEAN),
                       (pd.api.types.is_numeric_dtype, NUMBER),
                       (pd.api.types.is_datetime64_any_dtype, DATETIME),
                       (pd.api.types.is_string_dtype, STRING)):
        if test(dtype) and (kind != STRING or not pd.api.types.is_object_dtype(dtype)):
            return np.where(series.isna().to_numpy(), EMPTY, kind).astype(np.int8)
    # an object column of one kind is told in C (a loaded file: millions of ids)
    inferred = _INFERRED_KINDS.get(pd.api.types.infer_dtype(series, skipna=True))
    if inferred is not None:
        return np.where(series.isna().to_numpy(), EMPTY, inferred).astype(np.int8)
    return np.fromiter((_kind(v) for v in series.tolist()), dtype=np.int8, count=len(series))


def _quoted(value: Any, limit: int = 40) -> str:
    text = str(value)
    return orjson.dumps(text if len(text) <= limit else text[:limit] + "...").decode()


def _bound(value: float | None) -> str:
    return "inf" if value is None else f"{value:g}"


def _one_of(values: list[Any]) -> str:
    return "must be one of " + ", ".join(str(v) for v in values)


class _Checker:
    """Rejects values column by column; a row keeps only its first error.

    `text`: the input is text (a CSV file), so a number or a flag arrives as a string and is
    parsed; otherwise (JSON, Parquet, a typed frame) each value must already have its type.
    """

    def __init__(self, frame: pd.DataFrame, text: bool) -> None:
        self.frame = frame
        self.text = text
        self.bad = np.zeros(len(frame), dtype=bool)
        self.rows = np.arange(1, len(frame) + 1)
        self.errors: list[RowError] = []

    def reject(self, mask: Any, column: str, reason: str | list[str]) -> None:
        """Reject the rows of `mask` (one reason, or one per row of the frame)."""
        mask = np.asarray(mask, dtype=bool) & ~self.bad
        if isinstance(reason, str):
            self.errors.extend(RowError(int(row), column, reason) for row in self.rows[mask])
        else:
            self.errors.extend(RowError(int(self.rows[i]), column, reason[i])
                               for i in np.flatnonzero(mask))
        self.bad |= mask

    def kinds(self, name: str, column: ColumnSpec, accepted: set[int], what: str) -> np.ndarray:
        """Each value's kind, after rejecting those of another type and the required empties."""
        kinds = _kinds(self.frame[name])
        if self.text and STRING in accepted:  # a blank cell of a CSV file is an empty value
            blank = np.zeros(len(kinds), dtype=bool)
            strings = kinds == STRING
            blank[strings] = self.frame[name][strings].str.strip().eq("").to_numpy()
            kinds = np.where(blank, EMPTY, kinds).astype(np.int8)
        wrong = ~np.isin(kinds, [*accepted, EMPTY])
        if wrong.any():
            reasons = [""] * len(kinds)
            for i in np.flatnonzero(wrong):
                reasons[i] = f"must be {what}, got {_KIND_NAMES[int(kinds[i])]}"
            self.reject(wrong, name, reasons)
        if not column.nullable:
            self.reject(kinds == EMPTY, name, "required value is empty")
        return np.where(wrong, EMPTY, kinds).astype(np.int8)

    def string(self, name: str, column: ColumnSpec) -> None:
        kinds = self.kinds(name, column, {STRING}, "a string")
        raw = self.frame[name]
        if not np.isin(kinds, [STRING, EMPTY]).all():  # values of another kind were rejected
            raw = raw.astype(object).where(kinds == STRING, None)
        text = raw.astype("string").str.strip()
        empty = _is_blank(text)
        if not column.nullable:
            self.reject(empty, name, "required value is empty")
        limit = column.length_limit
        self.reject(np.asarray(text.str.len().fillna(0) > limit, dtype=bool), name,
                    f"longer than {limit} characters")
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
        accepted = {NUMBER, STRING} if self.text else {NUMBER}
        kinds = self.kinds(name, column, accepted, "a number")
        raw = self.frame[name].astype(object)
        if self.text:  # a CSV cell may be padded
            raw = raw.map(lambda v: v.strip() if isinstance(v, str) else v)
        empty = kinds == EMPTY
        values = pd.to_numeric(raw.where(~empty, None), errors="coerce")
        values = values.astype("float64") if values.dtype == object else values
        self.reject(values.isna() & ~empty, name, "not a number")
        self.reject(np.asarray(~np.isfinite(values.fillna(0)), dtype=bool), name,
                    "must be a finite number")
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
            self.reject(np.asarray((values.abs() >= _INT64_LIMIT).fillna(False), dtype=bool),
                        name, "outside the 64-bit integer range")
        if column.allowed is not None:
            allowed = pd.to_numeric(pd.Series(column.allowed), errors="coerce").to_numpy()
            self.reject(values.notna() & ~values.isin(allowed), name, _one_of(column.allowed))
        self.frame[name] = values

    def boolean(self, name: str, column: ColumnSpec) -> None:
        accepted = {BOOLEAN, STRING} if self.text else {BOOLEAN}
        kinds = self.kinds(name, column, accepted, "true or false")
        raw = self.frame[name].astype(object)

        def parse(value: Any, kind: int) -> Any:
            if kind == BOOLEAN:
                return bool(value)
            if kind == STRING:
                word = value.strip().lower()
                return True if word in _TRUE_TEXT else False if word in _FALSE_TEXT else None
            return None

        values = pd.Series([parse(v, k) for v, k in zip(raw.tolist(), kinds, strict=True)],
                           index=raw.index, dtype=object)
        self.reject(values.isna() & (kinds != EMPTY), name, "must be true or false")
        self.frame[name] = values

    def timestamp(self, name: str, column: ColumnSpec, bounds: _TimeBounds | None) -> None:
        kinds = self.kinds(name, column, {STRING, DATETIME}, "an ISO 8601 string with a time zone")
        raw = self.frame[name]
        stamps = pd.Series(pd.NaT, index=raw.index, dtype=TIMESTAMP_DTYPE)
        typed = kinds == DATETIME
        if typed.any():
            stamps[typed] = self._typed_stamps(name, raw[typed])
        strings = kinds == STRING
        if strings.any():
            stamps[strings] = self._text_stamps(name, raw[strings], bounds)
        if bounds is not None:
            early = np.asarray((stamps < bounds.earliest).fillna(False), dtype=bool)
            self.reject(early, name, bounds.early())
            late = np.asarray((stamps > bounds.latest).fillna(False), dtype=bool)
            self.reject(late, name, bounds.late())
        self.frame[name] = stamps.astype(TIMESTAMP_DTYPE)

    def _typed_stamps(self, name: str, values: pd.Series) -> pd.Series:
        """Datetime values (a typed frame): only those with a zone."""
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            return values.dt.tz_convert("UTC")
        if pd.api.types.is_datetime64_dtype(values.dtype):
            naive = np.ones(len(values), dtype=bool)
        else:
            naive = np.array([getattr(v, "tzinfo", None) is None for v in values.tolist()])
        mask = np.zeros(len(self.frame), dtype=bool)
        mask[values.index.to_numpy()] = naive
        self.reject(mask, name, "a time zone is required, got a datetime without one")
        aware = values[~naive]
        return pd.Series(pd.to_datetime(aware.tolist(), utc=True), index=aware.index) \
            .reindex(values.index)

    def _text_stamps(self, name: str, values: pd.Series, bounds: _TimeBounds | None
                     ) -> pd.Series:
        """ISO 8601 strings with a zone; anything else is named with its value."""
        text = values.str.strip()
        ok = text.str.fullmatch(_ISO_WITH_ZONE).fillna(False).to_numpy(dtype=bool)
        parsed = pd.to_datetime(text.where(ok, None), utc=True, format="ISO8601", errors="coerce")
        invalid = ok & parsed.isna().to_numpy()
        reasons = [""] * len(self.frame)
        for i in np.flatnonzero(~ok | invalid):  # only the bad ones: a file may have millions
            value = _quoted(values.iloc[i])
            reasons[values.index[i]] = (
                _out_of_range(values.iloc[i], bounds) or f"not a valid date and time, got {value}"
                if ok[i] else f"ISO 8601 with a time zone required, got {value}")
        mask = np.zeros(len(self.frame), dtype=bool)
        mask[values.index.to_numpy()] = ~ok | invalid
        self.reject(mask, name, reasons)
        return parsed


@dataclass(frozen=True)
class _TimeBounds:
    earliest: pd.Timestamp
    latest: pd.Timestamp
    max_future: pd.Timedelta

    def early(self) -> str:
        """The reason for a time before `earliest`."""
        return f"before {_iso(self.earliest)}, the earliest time this use case accepts"

    def late(self) -> str:
        """The reason for a time after now + `max_future`."""
        return f"more than {_describe(self.max_future)} in the future"


def _out_of_range(text: str, bounds: _TimeBounds | None) -> str | None:
    """Why a real time outside pandas' years (1677-2262) is refused; None if it is no time."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if bounds is None:
        return f"outside the years {pd.Timestamp.min.year + 1}-{pd.Timestamp.max.year - 1}"
    return bounds.early() if moment.year < pd.Timestamp.min.year + 1 else bounds.late()


def _iso(stamp: pd.Timestamp) -> str:
    return stamp.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_blank(text: pd.Series) -> np.ndarray:
    return np.asarray((text.isna() | (text == "")).fillna(True), dtype=bool)


def _describe(delta: pd.Timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"one {unit}" if count == 1 else f"{count} {unit}s"
    return f"{seconds:g} seconds"


def validate_events(raw: pd.DataFrame, contract: EventLogSpec, now: pd.Timestamp | None = None,
                    text: bool = False) -> tuple[pd.DataFrame, list[RowError]]:
    """Check every row against the contract; return the clean typed rows and one error per bad
    row (its first bad value). A missing required column or an unknown one rejects the input.

    Types are strict: a number must be a number, a flag a boolean, a time an ISO 8601 string
    with a zone (or an aware datetime) within the contract's `earliest` .. now + `max_future`.
    Only `text` input (a CSV file, where every cell is a string) has its numbers and flags
    (true/false/1/0) parsed from strings."""
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
    check = _Checker(frame, text)
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    future = pd.Timedelta(contract.max_future)
    bounds = _TimeBounds(pd.Timestamp(contract.earliest), now + future, future)
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
            check.timestamp(name, column, bounds if name == contract.timestamp else None)
    event_id = frame[contract.event_id]
    check.reject(event_id.notna() & event_id.duplicated(keep="first"), contract.event_id,
                 f"duplicate {contract.event_id} within the input")

    clean = frame.loc[~check.bad, list(columns)].astype(event_dtypes(contract))
    errors = sorted(check.errors, key=lambda e: (e.row, e.field))
    return clean.reset_index(drop=True), errors


# the longest JSON of a value of each type: -9223372036854775808, -1.7976931348623157e+308,
# false, "2026-01-05T08:00:00.123456789+00:00" (the longest zoned ISO 8601 the rules admit)
_LARGEST_JSON = {"int": 20, "float": 24, "bool": 5, "timestamp": 37}
UTF8_MAX_BYTES = 4  # bytes of the widest character in UTF-8


def largest_event_bytes(contract: EventLogSpec) -> int:
    """The most bytes one valid event of the contract takes as compact UTF-8 JSON (every field
    present, each string at its length limit in 4-byte characters; JSON escapes aside)."""
    total = 2  # {}
    for name, column in contract.columns.items():
        total += len(orjson.dumps(name)) + 2  # "name": and a comma
        if column.type != "string":
            total += _LARGEST_JSON[column.type]
        elif column.allowed is not None:
            total += max(len(orjson.dumps(str(v))) for v in column.allowed)
        else:
            total += 2 + UTF8_MAX_BYTES * column.length_limit
    return total


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
