"""Data quality of the window's events, and the freshness of each feature view."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from feastflow.event_log import sql_string
from feastflow.settings import Settings
from feastflow.spec import ModelSpec
from pipelines.features import event_log_connection
from pipelines.monitoring.window import Observed, Section, Window


def data_quality(settings: Settings, spec: ModelSpec, window: Window,
                 known_until: pd.Timestamp | None = None) -> dict[str, Any]:
    """Events of the window: volume against the 28 days before, null rates, and the values
    never seen before `known_until` (the end of the champion's data; default: the window)."""
    log = spec.event_log
    con = event_log_connection(settings.events_dir(spec.name), spec.event_log.timestamp)
    before = window.start - pd.Timedelta(days=28)
    daily = con.execute(f"""
        SELECT date_trunc('day', {log.timestamp}) AS day, count(*) AS events FROM events
        WHERE {log.timestamp} >= ? AND {log.timestamp} < ? GROUP BY 1 ORDER BY 1
    """, [before.to_pydatetime(), window.end.to_pydatetime()]).df()
    daily["day"] = pd.to_datetime(daily["day"], utc=True)
    in_window = daily["day"] >= window.start.floor("D")
    usual = float(daily.loc[~in_window, "events"].mean()) if (~in_window).any() else math.nan
    args = [window.start.to_pydatetime(), window.end.to_pydatetime()]
    described = con.execute("DESCRIBE events").df()
    columns = described["column_name"].tolist()
    nulls = con.execute(
        "SELECT count(*) AS n, " + ", ".join(f"avg(({c} IS NULL)::INT) AS \"{c}\"" for c in columns)
        + f" FROM events WHERE {log.timestamp} >= ? AND {log.timestamp} < ?", args).df().iloc[0]
    current = int(nulls["n"]) / ((window.end - window.start) / pd.Timedelta(days=1))  # partial days
    categorical = [c for c, t in described[["column_name", "column_type"]].values
                   if t == "VARCHAR" and c not in (log.entity, log.event_id)]
    new_categories: dict[str, list[str]] = {}
    for column in categorical:
        fresh = con.execute(f"""
            SELECT DISTINCT {column} FROM events
            WHERE {log.timestamp} >= ? AND {log.timestamp} < ? AND {column} IS NOT NULL
            EXCEPT SELECT DISTINCT {column} FROM events WHERE {log.timestamp} < ?
        """, [*args, min(known_until or window.start, window.start).to_pydatetime()]).fetchall()
        if fresh:
            new_categories[column] = sorted(str(v[0]) for v in fresh)
    return {
        "events": int(nulls["n"]),
        "events_per_day": current,
        "usual_events_per_day": usual,
        "volume_ratio": current / usual if usual else math.nan,
        "daily": [{"day": d.isoformat(), "events": int(n), "in_window": bool(w)}
                  for d, n, w in zip(daily["day"], daily["events"], in_window, strict=True)],
        "null_rates": {c: float(nulls[c]) for c in columns if not pd.isna(nulls[c])},
        "new_categories": new_categories,
    }


def feature_freshness(settings: Settings, spec: ModelSpec, window: Window
                      ) -> dict[str, dict[str, Any]]:
    """Each feature view: the newest row of its offline table and where materialization reached."""
    from feastflow.store import open_store

    store = open_store(settings, spec.name)
    out: dict[str, dict[str, Any]] = {}
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for view in store.list_feature_views():
        source = view.batch_source
        path = getattr(source, "path", None)
        if not path or not Path(path).exists():
            continue
        # The newest row a request at the window's end could see: rows stamped later (the
        # nightly snapshot written after the window) are not yet there, and read as a negative age.
        newest = con.execute(f"SELECT max({source.timestamp_field}) FROM read_parquet("
                             f"{sql_string(path)}) WHERE {source.timestamp_field}::TIMESTAMPTZ < ?",
                             [window.end.to_pydatetime()]).fetchone()[0]
        intervals = view.materialization_intervals
        online_until = intervals[-1][1] if intervals else None
        newest_ts = pd.Timestamp(newest).tz_convert("UTC") if newest is not None else None
        out[view.name] = {
            "newest_row": newest_ts.isoformat() if newest_ts is not None else None,
            "age_hours": (window.end - newest_ts) / pd.Timedelta(hours=1)
            if newest_ts is not None else math.inf,
            "materialized_until": pd.Timestamp(online_until).isoformat() if online_until else None,
        }
    return out


def _nullable(spec: ModelSpec) -> set[str]:
    """Event columns the data contract allows to be empty (no null-rate alert on them)."""
    return {name for name, column in spec.event_log.columns.items() if column.nullable}


def check_quality(observed: Observed) -> Section:
    """Event volume, null rates and new values of the window's events; feature freshness."""
    settings, spec, window = observed.settings, observed.spec, observed.window
    thresholds = observed.thresholds
    alerts: list[str] = []
    warnings: list[str] = []
    champion_data_end = observed.champion.tags.get("holdout_end")
    quality = data_quality(settings, spec, window,
                           pd.Timestamp(champion_data_end) if champion_data_end else None)
    low, high = thresholds.volume_ratio
    if not low <= quality["volume_ratio"] <= high:
        alerts.append(f"event volume: {quality['events_per_day']:.0f} a day is "
                      f"{quality['volume_ratio']:.2f}x the usual (allowed {low}..{high})")
    for column, rate in quality["null_rates"].items():
        if rate > thresholds.max_null_rate and column not in _nullable(spec):
            alerts.append(f"null rate: {column} {rate:.1%} > {thresholds.max_null_rate:.0%}")
    for column, values in quality["new_categories"].items():
        warnings.append(f"{column} values the champion never saw: {', '.join(values[:10])}")
    freshness = feature_freshness(settings, spec, window)
    for view, entry in freshness.items():
        if entry["age_hours"] > thresholds.max_feature_age_hours:
            alerts.append(f"freshness: {view}'s newest row is {entry['age_hours']:.0f} h older than "
                          f"the window's end (max {thresholds.max_feature_age_hours:g} h)")
    return Section({"data_quality": quality, "feature_freshness": freshness}, alerts, warnings)
