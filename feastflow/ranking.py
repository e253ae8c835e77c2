"""The ranking contract, one implementation for training and serving.

A request is (entity, timestamp, context). Stage 1 fetches per-entity features (candidate
lists); candidate generation turns each request into rows (request, item); stage 2 fetches the
per (entity, item, context) features; the model scores the rows. Training and serving both call
these functions, so what the model learned from is what it is served.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from feastflow.spec import ModelSpec

REQUEST_ID = "request_id"
EVENT_TIMESTAMP = "event_timestamp"
LABEL = "label"
MISSING_KEY = ""  # a join key that matches no feature row


def unix_seconds(timestamps: Any) -> np.ndarray:
    """Whole Unix seconds (floored) of UTC timestamps: a pandas Series or a datetime64 array."""
    if isinstance(timestamps, np.ndarray) and timestamps.dtype.kind == "M":
        micros = timestamps.astype("datetime64[us]").astype(np.int64)
    else:
        micros = (pd.to_datetime(timestamps, utc=True).astype("datetime64[us, UTC]")
                  .astype("int64").to_numpy())
    return micros // 1_000_000


TIME_KEYS = ("hour_of_day", "day_of_week", "is_weekend", "unix_seconds")


def time_key(seconds: np.ndarray, name: str) -> np.ndarray:
    """A time key from Unix seconds: hour_of_day (UTC), day_of_week (0 Monday), is_weekend (0/1)
    or unix_seconds."""
    if name == "hour_of_day":
        return (seconds // 3600) % 24
    if name == "day_of_week":
        return (seconds // 86400 + 3) % 7  # 1970-01-01 was a Thursday
    if name == "is_weekend":
        return (((seconds // 86400 + 3) % 7) >= 5).astype(np.int64)
    if name == "unix_seconds":
        return seconds
    raise ValueError(f"unknown time source {name!r}: use one of {', '.join(TIME_KEYS)}")


def time_values(timestamps: pd.Series, name: str) -> pd.Series:
    """Derive a time key from UTC timestamps: hour_of_day, is_weekend or unix_seconds."""
    return pd.Series(time_key(unix_seconds(timestamps), name), index=timestamps.index)


def resolve(source: str, columns: Mapping[str, Any], spec: ModelSpec) -> np.ndarray:
    """The values of one declared source (`entity`, `item`, `context:x`, `time:x`, `feature:x`).

    `columns` is a DataFrame (training) or a mapping of arrays (serving): the same code runs.
    """
    kind, _, name = source.partition(":")
    log = spec.event_log
    if kind == "entity":
        return np.asarray(columns[log.entity])
    if kind == "item":
        if log.item is None:
            raise ValueError(f"source {source!r}: the use case declares no event_log.item")
        return np.asarray(columns[log.item])
    if kind in ("context", "feature"):
        if name not in columns:
            raise KeyError(f"declared source {source!r} is not a column of the request frame")
        values = np.asarray(columns[name])
        if kind == "feature" and values.dtype == object:
            values = np.where(pd.isna(values), MISSING_KEY, values)
        return values
    if kind == "time":
        return time_key(unix_seconds(columns[log.timestamp]), name)
    raise ValueError(f"unknown source kind in {source!r}")


def entity_rows(requests: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """Stage-1 entity frame: one row per request with its join keys, as of just before it."""
    rows = pd.DataFrame({REQUEST_ID: requests[REQUEST_ID].to_numpy()})
    for key, source in spec.features.entity_join_keys.items():
        rows[key] = resolve(source, requests, spec)
    rows[EVENT_TIMESTAMP] = as_of(requests[spec.event_log.timestamp]).to_numpy()
    return rows


def as_of(timestamps: pd.Series) -> pd.Series:
    """Feature lookup time: one microsecond before the event, so its own item or label is never
    a feature."""
    ts = pd.to_datetime(timestamps, utc=True).astype("datetime64[us, UTC]")
    return ts - pd.Timedelta(microseconds=1)


def generate_candidates(lists: Sequence[Sequence[str] | None], limits: Sequence[int],
                        max_candidates: int) -> tuple[list[str], np.ndarray]:
    """Union of the truncated lists in priority order; also each item's 1-based rank per list."""
    items: list[str] = []
    seen: dict[str, int] = {}
    truncated = [list(values)[:limit] if values is not None else [] for values, limit
                 in zip(lists, limits, strict=True)]
    for values in truncated:
        for item in values:
            if item not in seen and len(items) < max_candidates:
                seen[item] = len(items)
                items.append(item)
    ranks = np.full((len(items), len(truncated)), np.nan)
    for j, values in enumerate(truncated):
        for rank, item in enumerate(values, start=1):
            i = seen.get(item)
            if i is not None and np.isnan(ranks[i, j]):
                ranks[i, j] = rank
    return items, ranks


def candidate_rows(requests: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """Stage-2 frame: one row per (request, candidate) with join keys, request fields and ranks.

    `requests` carries the request columns and the stage-1 list features.
    """
    candidates = spec.ranking_candidates
    list_names = list(candidates.lists)
    limits = list(candidates.lists.values())
    missing = [n for n in list_names if n not in requests]
    if missing:
        raise KeyError(f"stage-1 features missing for candidate generation: {missing}")
    request_index, items, rank_blocks = [], [], []
    columns = [requests[n].to_numpy() for n in list_names]
    for i in range(len(requests)):
        lists = [_as_list(col[i]) for col in columns]
        found, ranks = generate_candidates(lists, limits, candidates.max_candidates)
        request_index += [i] * len(found)
        items += found
        rank_blocks.append(ranks)
    expanded = requests.iloc[request_index].reset_index(drop=True)
    expanded[spec.item_column] = pd.Series(items, dtype="string")
    ranks = np.vstack(rank_blocks) if rank_blocks else np.empty((0, len(list_names)))
    for j, name in enumerate(list_names):
        expanded[f"rank_in_{name}"] = ranks[:, j]
    frame = pd.DataFrame({REQUEST_ID: expanded[REQUEST_ID].to_numpy(),
                          **frame_columns(expanded, spec)})
    frame[EVENT_TIMESTAMP] = as_of(expanded[spec.event_log.timestamp]).to_numpy()
    return frame


def frame_columns(expanded: Mapping[str, Any], spec: ModelSpec) -> dict[str, np.ndarray]:
    """The stage-2 columns of expanded candidate rows: join keys, request fields, extra inputs.

    `expanded` holds one entry per (request, candidate) row: the request's columns, its stage-1
    features, the item and its `rank_in_<list>` values.
    """
    out: dict[str, np.ndarray] = {}
    features = spec.features
    for key, source in {**features.join_keys, **features.request_fields, **features.inputs}.items():
        out[key] = resolve(source, expanded, spec)
    rows = len(np.asarray(expanded[spec.event_log.entity]))
    for name in spec.model.extra_features:
        if name not in out:
            out[name] = np.asarray(expanded[name]) if name in expanded else np.full(rows, np.nan)
    return out


def event_rows(requests: pd.DataFrame, spec: ModelSpec) -> pd.DataFrame:
    """Per-event tasks: one row per request with its join keys, request fields and inputs, as
    of just before it (Feast's entity frame; the model reads the same columns when serving)."""
    frame = pd.DataFrame({REQUEST_ID: requests[REQUEST_ID].to_numpy(),
                          **frame_columns(requests, spec)})
    frame[EVENT_TIMESTAMP] = as_of(requests[spec.event_log.timestamp]).to_numpy()
    return frame


def _as_list(value: Any) -> list[str] | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return list(value)


def model_matrix(frame: pd.DataFrame, feature_names: Sequence[str],
                 categorical: Sequence[str]) -> pd.DataFrame:
    """The model's input columns in its order: categories as pandas categoricals, the rest float."""
    out = {}
    for name in feature_names:
        values = frame[name] if name in frame else pd.Series(np.nan, index=frame.index)
        if name in categorical:
            out[name] = values.astype("string").astype("category")
        else:
            out[name] = pd.to_numeric(values, errors="coerce").astype("float64")
    return pd.DataFrame(out, index=frame.index)


def model_array(columns: Mapping[str, Any], rows: int, feature_names: Sequence[str],
                categories: Mapping[str, Sequence[str]]) -> np.ndarray:
    """The model's input as float64 in its order, the numpy twin of `model_matrix`.

    `categories` maps each categorical input to the categories the model was trained with
    (LightGBM's `pandas_categorical`): a value becomes its index there, unknown values NaN.
    """
    missing = [None] * rows
    data: list[Any] = []
    for name in feature_names:
        values = columns.get(name)
        known = categories.get(name)
        if values is None:
            data.append(missing)
        elif known is not None:
            codes = {category: float(i) for i, category in enumerate(known)}
            data.append([np.nan if v is None else codes.get(str(v), np.nan) for v in values])
        else:
            data.append(values)
    try:  # one conversion for the whole matrix (None -> NaN, bool -> 0/1)
        return np.ascontiguousarray(np.array(data, dtype=np.float64).T)
    except (TypeError, ValueError):  # strings in a numeric input: coerce like pd.to_numeric
        out = np.empty((rows, len(feature_names)))
        for j, values in enumerate(data):
            out[:, j] = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").astype(
                "float64")
        return out


def model_categories(booster: Any, categorical: Sequence[str]) -> dict[str, list[str]]:
    """Each categorical input of a LightGBM booster with the categories it was trained with."""
    names = [n for n in booster.feature_name() if n in categorical]
    stored = getattr(booster, "pandas_categorical", None) or []
    if len(stored) != len(names):
        raise ValueError(f"the model stores categories for {len(stored)} inputs, the spec declares "
                         f"{len(names)} categorical inputs ({names}): retrain the model")
    return {name: [str(c) for c in cats] for name, cats in zip(names, stored, strict=True)}


def top_k(items: Sequence[str], scores: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The k best items by score, best first (ties keep candidate order)."""
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return [(items[i], float(scores[i])) for i in order]
