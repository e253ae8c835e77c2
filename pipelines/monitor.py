"""`feastflow monitor`: is the champion still right? Drift, skew, online accuracy, data quality.

Inputs: the served-request log the server samples (features and predictions, Parquet by
date/hour), the event log (what each user really opened next) and the champion's monitoring
reference (its holdout's model inputs and top predictions, logged with the model at training).

- Feature drift: PSI per model input, over bins taken from the reference (deciles, or its
  categories), with missing values as a bin of their own; the reference is re-weighted to the
  window's days of the week. Prediction drift: PSI of each request's best score.
- Training/serving skew: a sample of served requests is rebuilt offline with Feast's
  point-in-time join at the same user and time, and every served value is compared.
- Online accuracy per variant: top-1/top-4 hit rate of served answers against the user's next
  event, with Wilson 95 % intervals, and the challenger-minus-champion difference.
- Data quality of the window's events: volume against the usual, null rates, new categories,
  and the age of each feature view's newest row.

The statistics are written here on numpy/scipy rather than taken from Evidently: Evidently's PSI
bins the reference and the current data together, while bins must come from the reference
alone for readings to compare from one run to the next; and the skew and accuracy checks need
our own log and Feast's joins anyway (see docs/design.md, "Monitoring and retraining").
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pandas as pd

from feastflow.event_log import has_events, sql_string
from feastflow.ranking import REQUEST_ID, model_categories
from feastflow.settings import Settings
from feastflow.spec import ModelSpec, MonitorSpec
from pipelines.features import event_log_connection
from pipelines.training import REFERENCE_DAY
from registry.lifecycle import Registry

Progress = Callable[[str], None]
EPSILON = 1e-4  # share given to an empty bin, so that PSI stays finite
MISSING = "missing"


class MonitorError(RuntimeError):
    """Monitoring cannot run on what is there; the message says what to run first."""


# --- the window of served requests --------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """Served requests with request_ts in [start, end)."""

    start: pd.Timestamp
    end: pd.Timestamp


def served_glob(served_dir: Path) -> str:
    """Every written partition file of the served-request log (temporary files excluded)."""
    return str(served_dir / "**" / "*.parquet")


def load_served(served_dir: Path, days: int, since: datetime | None = None,
                until: datetime | None = None) -> tuple[pd.DataFrame, Window]:
    """Served records of the window: `days` days ending at `until` or the newest request."""
    if not any(served_dir.rglob("*.parquet")):
        raise MonitorError(f"no served requests are logged under {served_dir}: serve with "
                           "FEASTFLOW_REQUEST_LOG_SAMPLE > 0 (share of requests logged) first")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    source = (f"read_parquet({sql_string(served_glob(served_dir))}, hive_partitioning = false, "
              "union_by_name = true)")
    if until is None:
        newest = con.execute(f"SELECT max(request_ts) FROM {source}").fetchone()[0]
        end = pd.Timestamp(newest).tz_convert("UTC") + pd.Timedelta(microseconds=1)
    else:
        end = _utc(until)
    start = _utc(since) if since is not None else end - pd.Timedelta(days=days)
    if start >= end:
        raise MonitorError(f"empty window: since {start} is not before until {end}")
    served = con.execute(
        f"SELECT * FROM {source} WHERE request_ts >= ? AND request_ts < ? ORDER BY request_ts",
        [start.to_pydatetime(), end.to_pydatetime()]).df()
    if served.empty:
        raise MonitorError(f"no served requests between {start} and {end}")
    if "context" not in served:
        served["context"] = None
    return served, Window(start, end)


def _utc(value: datetime) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def model_answers(served: pd.DataFrame) -> pd.DataFrame:
    """Records the model answered and served (not a fallback, not a shadow scoring)."""
    return served[served["fallback"].isna() & ~served["shadow"].astype(bool)]


def served_inputs(records: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """One row per scored candidate: request index, item and each model input as logged."""
    columns: dict[str, list[Any]] = {name: [] for name in names}
    requests: list[int] = []
    items: list[str] = []
    for index, text in zip(records.index, records["features"], strict=True):
        logged = orjson.loads(text) if text else {}
        candidates = logged.get("candidates") or []
        if not candidates:
            continue
        n = len(candidates)
        requests.extend([index] * n)
        items.extend(candidates)
        for name in names:
            values = logged.get(name)
            columns[name].extend(values if values is not None else [None] * n)
    frame = pd.DataFrame({name: pd.array(values, dtype="Float64").to_numpy(
        dtype="float64", na_value=np.nan) for name, values in columns.items()})
    frame.insert(0, "item", items)
    frame.insert(0, "request", requests)
    return frame


# --- drift ---------------------------------------------------------------------------------------

@dataclass
class Drift:
    """PSI of one column, with the shares per bin behind it (for the plot)."""

    name: str
    psi: float
    bins: list[str]
    reference_share: list[float]
    current_share: list[float]
    n_reference: int
    n_current: int
    current_missing: float


def psi(reference: np.ndarray, current: np.ndarray, name: str, bins: int = 10,
        categorical: bool = False, labels: Sequence[str] | None = None,
        reference_weights: np.ndarray | None = None) -> Drift:
    """Population stability index over bins of the reference: deciles, or its categories.

    Missing values (NaN) are a bin of their own; a category unseen in the reference counts in
    an `other` bin. An empty bin gets a share of 1e-4 so that the sum stays finite. With
    `reference_weights` the reference's shares are weighted (its bins stay unweighted deciles).
    """
    reference = np.asarray(reference, dtype="float64")
    current = np.asarray(current, dtype="float64")
    if len(reference) == 0 or len(current) == 0:
        raise ValueError(f"{name}: PSI needs values on both sides "
                         f"(reference {len(reference)}, current {len(current)})")
    known = reference[~np.isnan(reference)]
    if categorical:
        categories = np.unique(known)
        bin_names = [labels[int(c)] if labels is not None and 0 <= c < len(labels) else f"{c:g}"
                     for c in categories]
        ref_index = _category_index(reference, categories)
        cur_index = _category_index(current, categories)
        bin_names += ["other", MISSING]
        width = len(categories) + 2
    else:
        edges = np.unique(np.quantile(known, np.linspace(0, 1, bins + 1))[1:-1]) if len(known) \
            else np.array([])
        ref_index = _numeric_index(reference, edges)
        cur_index = _numeric_index(current, edges)
        bounds = ["-inf", *(f"{e:.4g}" for e in edges), "inf"]
        bin_names = [f"<= {bounds[i + 1]}" if i < len(edges) else f"> {bounds[i]}"
                     for i in range(len(edges) + 1)] + [MISSING]
        width = len(edges) + 2
    ref_share = _shares(ref_index, width, reference_weights)
    cur_share = _shares(cur_index, width)
    value = float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))
    return Drift(name, value, bin_names, ref_share.tolist(), cur_share.tolist(), len(reference),
                 len(current), float(np.isnan(current).mean()))


def _category_index(values: np.ndarray, categories: np.ndarray) -> np.ndarray:
    index = np.searchsorted(categories, values)
    found = (index < len(categories)) & (categories[np.minimum(index, len(categories) - 1)]
                                         == values) if len(categories) else np.zeros(len(values),
                                                                                     bool)
    out = np.where(found, index, len(categories))  # other
    return np.where(np.isnan(values), len(categories) + 1, out)  # missing


def _numeric_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    index = np.searchsorted(edges, values, side="left")  # bins (e[i-1], e[i]]
    return np.where(np.isnan(values), len(edges) + 1, index)


def _shares(index: np.ndarray, width: int, weights: np.ndarray | None = None) -> np.ndarray:
    counts = np.bincount(index.astype("int64"), weights=weights, minlength=width).astype(
        "float64")
    shares = counts / max(counts.sum(), 1.0)
    shares = np.maximum(shares, EPSILON)
    return shares / shares.sum()


def calendar_weights(reference: pd.Series, current: pd.Series) -> np.ndarray:
    """Weights that give the reference the current side's mix of `reference`'s values (e.g.
    days of the week): a window of a Sunday is compared with the reference's Sundays."""
    ref_share = reference.value_counts(normalize=True)
    cur_share = current.value_counts(normalize=True)
    ratio = (cur_share / ref_share).reindex(ref_share.index).fillna(0.0)
    return reference.map(ratio).fillna(0.0).to_numpy(dtype="float64")


def feature_drift(reference: pd.DataFrame, current: pd.DataFrame, bins: int,
                  categories: dict[str, list[str]], match_on: str | None = None) -> list[Drift]:
    """PSI of every model input present on both sides, largest first (see calendar_weights)."""
    weights = None
    if match_on is not None and match_on in reference and match_on in current:
        weights = calendar_weights(reference[match_on], current[match_on])
    out = [psi(reference[name].to_numpy(), current[name].to_numpy(), name, bins,
               categorical=name in categories, labels=categories.get(name),
               reference_weights=None if name == match_on else weights)
           for name in reference.columns if name in current.columns]
    return sorted(out, key=lambda d: d.psi, reverse=True)


def noise_floor(reference: pd.DataFrame, days: pd.Series, window_days: int, bins: int,
                categories: dict[str, list[str]], match_on: str | None = None
                ) -> dict[str, float]:
    """Per input, the largest PSI of any `window_days`-day slice of the reference against the
    whole reference: what a window of that length reads with no drift at all.

    PSI is biased upward on small samples, and per-user inputs have one value per user and
    day: a day of 100 users reads 0.2 with nothing changed. A drift must rise above this.
    """
    distinct = np.sort(days.unique())
    if len(distinct) <= window_days:  # no slice shorter than the reference: no floor
        return {}
    floor: dict[str, float] = {}
    for start in range(len(distinct) - window_days + 1):
        in_slice = days.isin(distinct[start:start + window_days]).to_numpy()
        for drift in feature_drift(reference, reference[in_slice], bins, categories, match_on):
            floor[drift.name] = max(floor.get(drift.name, 0.0), drift.psi)
    return floor


# --- online accuracy -----------------------------------------------------------------------------

@dataclass
class HitRate:
    """Hits out of n, with a Wilson 95 % interval."""

    hits: int
    n: int
    rate: float
    low: float
    high: float


def hit_rate(hits: int, n: int) -> HitRate:
    """The hit rate and its Wilson 95 % interval (scipy's binomtest)."""
    from scipy.stats import binomtest

    if n == 0:
        return HitRate(0, 0, math.nan, math.nan, math.nan)
    ci = binomtest(hits, n).proportion_ci(0.95, method="wilson")
    return HitRate(hits, n, hits / n, float(ci.low), float(ci.high))


def labelled_answers(served: pd.DataFrame, events_dir: Path, spec: ModelSpec) -> pd.DataFrame:
    """Served answers with the item the user really opened next (within the label horizon)."""
    log = spec.event_log
    con = event_log_connection(events_dir, spec.event_log.timestamp)
    con.register("served_df", served[["request_id", "request_ts", "user_hash", "variant",
                                      "model_version", "fallback", "shadow", "items"]])
    horizon = pd.Timedelta(seconds=spec.monitor.label_horizon_seconds).to_pytimedelta()
    return con.execute(f"""
        WITH next AS (
            SELECT {log.entity} AS entity, {log.timestamp} AS ts, {log.item} AS actual
            FROM events WHERE {log.timestamp} >= (SELECT min(request_ts) FROM served_df)
        )
        SELECT s.*, CASE WHEN e.ts - s.request_ts <= ? THEN e.actual END AS actual
        FROM served_df s ASOF LEFT JOIN next e
          ON s.user_hash = e.entity AND e.ts >= s.request_ts
    """, [horizon]).df()


def accuracy_by_variant(answers: pd.DataFrame, k: int) -> dict[str, dict[str, Any]]:
    """Per variant (shadow scorings apart): top-1 and top-k hit rates and the fallback share."""
    answered = answers.groupby(["variant", "shadow"]).size()
    labelled = answers[answers["actual"].notna()]
    out: dict[str, dict[str, Any]] = {}
    for (variant, shadow), group in labelled.groupby(["variant", "shadow"], sort=True):
        top1 = sum(bool(len(items)) and items[0] == actual
                   for items, actual in zip(group["items"], group["actual"], strict=True))
        topk = sum(actual in list(items[:k])
                   for items, actual in zip(group["items"], group["actual"], strict=True))
        name = f"{variant} (shadow)" if shadow else str(variant)
        out[name] = {
            "top1": asdict(hit_rate(int(top1), len(group))),
            f"top{k}": asdict(hit_rate(int(topk), len(group))),
            "fallback_share": float(group["fallback"].notna().mean()),
            "model_versions": sorted(group["model_version"].astype(str).unique().tolist()),
            "labelled_share": len(group) / int(answered[(variant, shadow)]),
        }
    return out


def difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """a - b of two hit rates with a normal 95 % interval (reading an A/B test)."""
    pa, pb, na, nb = a["rate"], b["rate"], a["n"], b["n"]
    if not na or not nb:
        return {"diff": math.nan, "low": math.nan, "high": math.nan}
    se = math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
    return {"diff": pa - pb, "low": pa - pb - 1.96 * se, "high": pa - pb + 1.96 * se}


def accuracy_over_time(answers: pd.DataFrame, k: int, freq: str = "D") -> pd.DataFrame:
    """Top-k hit rate per period (`freq`: "D" days, "h" hours) and variant, served answers only."""
    labelled = answers[answers["actual"].notna() & ~answers["shadow"].astype(bool)].copy()
    if labelled.empty:
        return pd.DataFrame(columns=["day", "variant", "rate", "n"])
    labelled["hit"] = [actual in list(items[:k]) for items, actual
                       in zip(labelled["items"], labelled["actual"], strict=True)]
    labelled["day"] = pd.to_datetime(labelled["request_ts"], utc=True).dt.floor(freq)
    return (labelled.groupby(["day", "variant"])["hit"].agg(rate="mean", n="size")
            .reset_index())


# --- training/serving skew -----------------------------------------------------------------------

@dataclass
class Skew:
    """Served values against the offline point-in-time values of the same requests."""

    requests: int
    compared_values: int
    mismatch_rate: float
    same_candidates_share: float
    per_feature: dict[str, float]
    examples: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


def offline_replay(settings: Settings, spec: ModelSpec, records: pd.DataFrame) -> pd.DataFrame:
    """The ranking rows Feast's point-in-time join gives for the served requests (by context)."""
    from feastflow.store import open_store
    from pipelines.datasets import build_ranking_set

    log = spec.event_log
    contexts = [orjson.loads(c) if isinstance(c, str) and c else {} for c in records["context"]]
    requests = pd.DataFrame({
        REQUEST_ID: np.arange(len(records)),
        log.entity: records["user_hash"].to_numpy(),
        log.timestamp: pd.to_datetime(records["request_ts"], utc=True).astype(
            "datetime64[us, UTC]").to_numpy(),
        log.item: "",  # the label is not needed here
    })
    for name in log.context:
        requests[name] = [c.get(name) for c in contexts]
    return build_ranking_set(open_store(settings, spec.name), requests, spec)


def training_serving_skew(settings: Settings, spec: ModelSpec, records: pd.DataFrame,
                          booster: Any, tolerance: float = 1e-6) -> Skew:
    """Compare each served model input with the offline value for the same request and item."""
    from pipelines.training import encoded_inputs

    names = booster.feature_name()
    records = records.reset_index(drop=True)
    served = served_inputs(records, names)
    offline = offline_replay(settings, spec, records)
    offline_inputs = pd.DataFrame(encoded_inputs(offline, booster, spec.model.categorical),
                                  columns=names)
    offline_inputs.insert(0, "item", offline[spec.event_log.item].to_numpy())
    offline_inputs.insert(0, "request", offline[REQUEST_ID].to_numpy())
    served_sets = served.groupby("request")["item"].agg(frozenset)
    offline_sets = offline_inputs.groupby("request")["item"].agg(frozenset)
    same = (served_sets == offline_sets.reindex(served_sets.index)).mean()
    joined = served.merge(offline_inputs, on=["request", "item"], suffixes=("", "__offline"))
    per_feature: dict[str, float] = {}
    mismatches = 0
    examples: list[dict[str, Any]] = []
    for name in names:
        a = joined[name].to_numpy()
        b = joined[f"{name}__offline"].to_numpy()
        both_nan = np.isnan(a) & np.isnan(b)
        close = np.isclose(a, b, rtol=tolerance, atol=tolerance)
        differs = ~(both_nan | close)
        per_feature[name] = float(differs.mean()) if len(differs) else math.nan
        mismatches += int(differs.sum())
        for i in np.flatnonzero(differs)[:3]:
            row = joined.iloc[i]
            examples.append({"feature": name, "request_ts": str(records["request_ts"].iloc[
                int(row["request"])]), "item": row["item"], "served": _num(a[i]),
                "offline": _num(b[i])})
    compared = len(joined) * len(names)
    return Skew(len(records), compared, mismatches / compared if compared else math.nan,
                float(same), dict(sorted(per_feature.items(), key=lambda kv: -kv[1])),
                examples[:20])


def _num(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def offline_tables_lag(settings: Settings, spec: ModelSpec) -> pd.Timedelta | None:
    """How far the newest real-time feature row trails the newest event (None: no tables)."""
    if spec.realtime is None:
        return None
    table = settings.features_dir / spec.name / f"{spec.realtime.entity_table.table}.parquet"
    if not table.is_file():
        return None
    con = event_log_connection(settings.events_dir(spec.name), spec.event_log.timestamp)
    newest_row = con.execute(
        f"SELECT max(event_timestamp) FROM read_parquet({sql_string(table)})").fetchone()[0]
    newest_event = con.execute(
        f"SELECT max({spec.event_log.timestamp}) FROM events").fetchone()[0]
    return pd.Timestamp(newest_event) - pd.Timestamp(newest_row)


# --- data quality --------------------------------------------------------------------------------

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
                   if t == "VARCHAR" and c not in (log.entity, "event_id")]
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
        newest = con.execute(f"SELECT max({source.timestamp_field}) FROM read_parquet("
                             f"{sql_string(path)})").fetchone()[0]
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


# --- the whole report ----------------------------------------------------------------------------

@dataclass
class MonitorResult:
    """The JSON summary, where the files went, and the alerts (empty: all within thresholds)."""

    summary: dict[str, Any]
    alerts: list[str]
    report: Path
    summary_file: Path
    metrics_file: Path


def run_monitor(settings: Settings, spec: ModelSpec, out_dir: Path | None = None,
                since: datetime | None = None, until: datetime | None = None,
                progress: Progress = print) -> MonitorResult:
    """Compute every check over the window, write report.html, summary.json and metrics.prom."""
    from registry import lifecycle

    thresholds = spec.monitor
    if spec.per_event:
        raise MonitorError(f"monitoring of {spec.task} use cases is not built yet: `feastflow "
                           "monitor` reads ranked answers against the next event")
    events_dir = settings.events_dir(spec.name)
    if not has_events(events_dir):
        raise MonitorError(f"the event log {events_dir} is empty: ingest events first")
    served, window = load_served(settings.served_dir(spec.name), thresholds.window_days, since,
                                 until)
    progress(f"{len(served):,} served requests logged between {window.start:%Y-%m-%d %H:%M} and "
             f"{window.end:%Y-%m-%d %H:%M}")
    registry = lifecycle.Registry(settings.tracking_uri, settings.artifacts_uri)
    champion = registry.load_by_alias(spec.registered_model_name, lifecycle.CHAMPION)
    reference, reference_predictions = load_reference(registry, champion.run_id,
                                                      champion.version)
    categories = model_categories(champion.booster, spec.model.categorical)
    answered = model_answers(served)
    alerts: list[str] = []
    warnings: list[str] = []

    progress("feature and prediction drift (PSI over the bins of the champion's reference)")
    reference_days = reference.pop(REFERENCE_DAY) if REFERENCE_DAY in reference else None
    current = served_inputs(answered, list(reference.columns))
    drifts = feature_drift(reference, current, thresholds.psi_bins, categories,
                           thresholds.match_reference_on) if len(current) else []
    window_days = max(1, math.ceil((window.end - window.start) / pd.Timedelta(days=1)))
    floors = noise_floor(reference, reference_days, window_days, thresholds.psi_bins, categories,
                         thresholds.match_reference_on) if reference_days is not None else {}
    drifted = [d for d in drifts
               if d.psi > max(thresholds.psi_alert, floors.get(d.name, 0.0))
               and d.name not in thresholds.drift_exempt]
    if len(drifted) > thresholds.max_drifted_features:
        alerts.append(f"feature drift: {len(drifted)} inputs with PSI > {thresholds.psi_alert} "
                      f"and above what a {window_days}-day slice of the reference reads "
                      f"(allowed {thresholds.max_drifted_features}): "
                      + ", ".join(f"{d.name} {d.psi:.2f} (floor {floors.get(d.name, 0):.2f})"
                                  for d in drifted))
    champion_answers = answered[answered["model_version"].astype(str) == champion.version]
    top_scores = np.array([s[0] for s in champion_answers["scores"] if len(s)], dtype="float64")
    prediction = psi(reference_predictions["top_score"].to_numpy(), top_scores, "top_score",
                     thresholds.psi_bins) if len(top_scores) else None
    if prediction is not None and prediction.psi > thresholds.prediction_psi_alert:
        alerts.append(f"prediction drift: PSI of the best score {prediction.psi:.2f} > "
                      f"{thresholds.prediction_psi_alert}")

    progress("online accuracy per variant (served answers against the next event)")
    answers = labelled_answers(served, events_dir, spec)
    accuracy = accuracy_by_variant(answers, spec.top_k)
    topk = f"top{spec.top_k}"
    for variant, entry in accuracy.items():
        if "shadow" in variant or not entry["top1"]["n"]:
            continue
        for metric, minimum in (("top1", thresholds.min_online_top1),
                                (topk, thresholds.min_online_top4)):
            if entry[metric]["rate"] < minimum:
                alerts.append(f"online accuracy: {variant} {metric} {entry[metric]['rate']:.3f} "
                              f"< {minimum} (n={entry[metric]['n']})")
    ab = None
    if "champion" in accuracy and "challenger" in accuracy:
        ab = {m: difference(accuracy["challenger"][m], accuracy["champion"][m])
              for m in ("top1", topk)}

    progress("training/serving skew (served requests rebuilt with Feast's point-in-time join)")
    skew = _skew(settings, spec, answered, champion.booster, thresholds)
    if skew.requests and skew.mismatch_rate > thresholds.max_skew_rate:
        worst = [f"{k} {v:.1%}" for k, v in skew.per_feature.items() if v > 0][:5]
        alerts.append(f"training/serving skew: {skew.mismatch_rate:.2%} of served values differ "
                      f"from offline (max {thresholds.max_skew_rate:.0%}): " + ", ".join(worst))

    progress("data quality of the window's events and feature freshness")
    champion_data_end = champion.tags.get("holdout_end")
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

    summary = {
        "use_case": spec.name,
        "window": {"start": window.start.isoformat(), "end": window.end.isoformat()},
        "served_requests": len(served),
        "model_answers": len(answered),
        "champion_version": champion.version,
        "thresholds": thresholds.model_dump(),
        "feature_drift": {d.name: round(d.psi, 4) for d in drifts},
        "psi_noise_floor": {name: round(v, 4) for name, v in floors.items()},
        "drifted_features": [d.name for d in drifted],
        "prediction_drift": round(prediction.psi, 4) if prediction else None,
        "online_accuracy": accuracy,
        "challenger_minus_champion": ab,
        "skew": asdict(skew),
        "data_quality": quality,
        "feature_freshness": freshness,
        "alerts": alerts,
        "warnings": warnings,
        "generated_at": datetime.now(UTC).isoformat(),
    }
    out_dir = out_dir or settings.monitoring_dir(spec.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_file = _write_atomic(out_dir / "summary.json",
                                 json.dumps(_json_safe(summary), indent=2).encode())
    metrics_file = _write_atomic(out_dir / "metrics.prom", prometheus_text(summary, spec))
    freq = "h" if window.end - window.start <= pd.Timedelta(days=2) else "D"
    html = render_html(summary, [d for d in drifts if d.name not in thresholds.drift_exempt],
                       prediction, accuracy_over_time(answers, spec.top_k, freq))
    report = _write_atomic(out_dir / "report.html", html.encode())
    return MonitorResult(summary, alerts, report, summary_file, metrics_file)


def _nullable(spec: ModelSpec) -> set[str]:
    """Event columns the data contract allows to be empty (no null-rate alert on them)."""
    return {name for name, column in spec.event_log.columns.items() if column.nullable}


def _skew(settings: Settings, spec: ModelSpec, answered: pd.DataFrame, booster: Any,
          thresholds: MonitorSpec) -> Skew:
    with_context = answered[answered["context"].notna()]
    if with_context.empty:
        return Skew(0, 0, math.nan, math.nan, {}, note="no served request logged its context")
    lag = offline_tables_lag(settings, spec)
    if lag is None or lag > pd.Timedelta(seconds=1):
        return Skew(0, 0, math.nan, math.nan, {},
                    note="the offline feature tables are older than the event log: run "
                         "`feastflow features` before monitoring to measure skew")
    sample = with_context.sample(min(len(with_context), thresholds.skew_sample), random_state=0)
    return training_serving_skew(settings, spec, sample.sort_values("request_ts"), booster)


def load_reference(registry: Registry, run_id: str, version: str
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The champion's training inputs sample and holdout top predictions (its MLflow run)."""
    from pipelines.training import REFERENCE_DIR, REFERENCE_FEATURES, REFERENCE_PREDICTIONS

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = registry.download_run_artifacts(run_id, REFERENCE_DIR, Path(tmp))
        except Exception as e:
            raise MonitorError(f"the champion v{version} has no monitoring reference in its run "
                               f"({e}); train it again with `feastflow train`") from e
        return (pd.read_parquet(folder / REFERENCE_FEATURES),
                pd.read_parquet(folder / REFERENCE_PREDICTIONS))


def _write_atomic(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


# --- outputs -------------------------------------------------------------------------------------

def prometheus_text(summary: dict[str, Any], spec: ModelSpec) -> bytes:
    """The headline numbers as Prometheus gauges (node_exporter's textfile collector format)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    labels = {"use_case": spec.name}

    def gauge(name: str, doc: str, extra: Sequence[str] = ()) -> Gauge:
        return Gauge(f"feastflow_monitor_{name}", doc, ["use_case", *extra], registry=registry)

    psi_gauge = gauge("feature_psi", "PSI of a model input against the champion's reference",
                      ["feature"])
    for name, value in summary["feature_drift"].items():
        psi_gauge.labels(**labels, feature=name).set(value)
    if summary["prediction_drift"] is not None:
        gauge("prediction_psi", "PSI of the best score against the holdout").labels(
            **labels).set(summary["prediction_drift"])
    hits = gauge("online_hit_rate", "served answers whose item was opened next", ["variant", "k"])
    count = gauge("online_labelled_requests", "served answers with a next event", ["variant"])
    for variant, entry in summary["online_accuracy"].items():
        for metric in ("top1", f"top{spec.top_k}"):
            hits.labels(**labels, variant=variant, k=metric.removeprefix("top")).set(
                entry[metric]["rate"])
        count.labels(**labels, variant=variant).set(entry["top1"]["n"])
    skew = summary["skew"]
    gauge("skew_rate", "share of served values unequal to offline point-in-time values").labels(
        **labels).set(skew["mismatch_rate"])
    quality = summary["data_quality"]
    gauge("event_volume_ratio", "events per day against the 28 days before").labels(
        **labels).set(quality["volume_ratio"])
    gauge("new_categories", "values never seen before the window").labels(**labels).set(
        sum(len(v) for v in quality["new_categories"].values()))
    age = gauge("feature_age_hours", "age of the newest offline row at the window's end",
                ["view"])
    for view, entry in summary["feature_freshness"].items():
        age.labels(**labels, view=view).set(entry["age_hours"])
    gauge("alerts", "thresholds crossed in the last run").labels(**labels).set(
        len(summary["alerts"]))
    return generate_latest(registry)


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode()


def _plots(summary: dict[str, Any], drifts: list[Drift], prediction: Drift | None,
           daily: pd.DataFrame) -> dict[str, str]:
    from matplotlib.figure import Figure  # no pyplot: no global backend, nothing to close

    thresholds = summary["thresholds"]
    plots: dict[str, str] = {}
    if drifts:  # the exempt inputs (calendar) are left out of the plots
        fig = Figure(figsize=(8, max(3, 0.25 * len(drifts))))
        ax = fig.subplots()
        names = [d.name for d in drifts][::-1]
        values = [d.psi for d in drifts][::-1]
        colors = ["#c0392b" if d.name in summary["drifted_features"] else
                  "#e67e22" if d.psi > 0.1 else "#3b75af" for d in drifts[::-1]]
        ax.barh(names, values, color=colors)
        floors = summary["psi_noise_floor"]
        if floors:
            ax.scatter([floors.get(n, 0.0) for n in names], names, marker="|", s=120,
                       color="k", label="noise floor (a reference slice)", zorder=3)
        ax.axvline(0.1, color="#e67e22", ls="--", lw=1, label="0.1: moving")
        ax.axvline(thresholds["psi_alert"], color="#c0392b", ls="--", lw=1, label="alert")
        ax.set_xlabel("PSI against the champion's reference (its holdout)")
        ax.legend(loc="lower right")
        plots["psi"] = _png(fig)
        shown = [d for d in drifts[:6]] + ([prediction] if prediction else [])
        fig = Figure(figsize=(12, 3 * math.ceil(len(shown) / 2)))
        axes = fig.subplots(math.ceil(len(shown) / 2), 2, squeeze=False).ravel()
        for ax, drift in zip(axes, shown, strict=False):
            x = np.arange(len(drift.bins))
            ax.bar(x - 0.2, drift.reference_share, 0.4, label="reference (champion's holdout)")
            ax.bar(x + 0.2, drift.current_share, 0.4, label="served")
            ax.set_xticks(x, drift.bins, rotation=60, fontsize=7, ha="right")
            ax.set_title(f"{drift.name}: PSI {drift.psi:.3f}", fontsize=9)
            ax.legend(fontsize=7)
        for ax in axes[len(shown):]:
            ax.set_visible(False)
        plots["distributions"] = _png(fig)
    accuracy = summary["online_accuracy"]
    if accuracy:
        fig = Figure(figsize=(8, 3.5))
        axes = fig.subplots(1, 2)
        variants = list(accuracy)
        for ax, metric in zip(axes, [m for m in accuracy[variants[0]] if m.startswith("top")],
                              strict=False):
            rates = [accuracy[v][metric]["rate"] for v in variants]
            err = [[r - accuracy[v][metric]["low"] for v, r in zip(variants, rates, strict=True)],
                   [accuracy[v][metric]["high"] - r for v, r in zip(variants, rates,
                                                                     strict=True)]]
            ax.bar(variants, rates, yerr=err, capsize=6, color="#3b75af")
            ax.set_ylim(0, 1)
            ax.set_title(f"online {metric} hit rate (95 % CI)")
            ax.tick_params(axis="x", labelsize=8)
        plots["accuracy"] = _png(fig)
    if not daily.empty:
        fig = Figure(figsize=(8, 3))
        ax = fig.subplots()
        for variant, group in daily.groupby("variant"):
            ax.plot(group["day"], group["rate"], marker="o", label=variant)
        ax.set_ylim(0, 1)
        ax.set_title("online top-k hit rate over the window")
        ax.legend()
        fig.autofmt_xdate()
        plots["daily_accuracy"] = _png(fig)
    quality = summary["data_quality"]
    if quality["daily"]:
        fig = Figure(figsize=(8, 3))
        ax = fig.subplots()
        days = [pd.Timestamp(d["day"]) for d in quality["daily"]]
        ax.bar(days, [d["events"] for d in quality["daily"]],
               color=["#c0392b" if d["in_window"] else "#95a5a6" for d in quality["daily"]])
        if math.isfinite(quality["usual_events_per_day"]):
            ax.axhline(quality["usual_events_per_day"], color="k", ls="--", lw=1,
                       label="usual (28 days before)")
            ax.legend()
        ax.set_title("events per day (window in red)")
        fig.autofmt_xdate()
        plots["volume"] = _png(fig)
    skew = summary["skew"]
    if skew["per_feature"]:
        fig = Figure(figsize=(8, max(3, 0.25 * len(skew["per_feature"]))))
        ax = fig.subplots()
        items = list(skew["per_feature"].items())[::-1]
        ax.barh([k for k, _ in items], [v for _, v in items], color="#8e44ad")
        ax.set_xlabel("share of served values unequal to the offline value")
        plots["skew"] = _png(fig)
    return plots


_TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>feastflow monitor: {{ s.use_case }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; font-size: 0.9em; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.alert { color: #c0392b; } .ok { color: #1e8449; } img { max-width: 100%; }
</style></head><body>
<h1>{{ s.use_case }}: monitoring report</h1>
<p>Served requests from {{ s.window.start }} to {{ s.window.end }}: {{ s.served_requests }} logged,
{{ s.model_answers }} answered by a model. Champion v{{ s.champion_version }}.</p>
{% if s.alerts %}<h2 class="alert">{{ s.alerts|length }} alert(s): retraining is due</h2>
<ul>{% for a in s.alerts %}<li class="alert">{{ a }}</li>{% endfor %}</ul>
{% else %}<h2 class="ok">No threshold crossed</h2>{% endif %}
{% if s.warnings %}<ul>{% for w in s.warnings %}<li>{{ w }}</li>{% endfor %}</ul>{% endif %}

<h2>Online accuracy per variant</h2>
<table><tr><th>variant</th><th>versions</th><th>labelled answers</th>
{% for m in metrics %}<th>{{ m }} (95 % CI)</th>{% endfor %}<th>fallback share</th></tr>
{% for v, e in s.online_accuracy.items() %}<tr><td>{{ v }}</td><td>{{ e.model_versions|join(", ") }}</td>
<td>{{ e.top1.n }}</td>{% for m in metrics %}<td>{{ "%.3f"|format(e[m].rate) }}
({{ "%.3f"|format(e[m].low) }}..{{ "%.3f"|format(e[m].high) }})</td>{% endfor %}
<td>{{ "%.1f %%"|format(100 * e.fallback_share) }}</td></tr>{% endfor %}</table>
{% if s.challenger_minus_champion %}<p>Challenger minus champion:
{% for m, d in s.challenger_minus_champion.items() %}{{ m }} {{ "%+.3f"|format(d.diff) }}
({{ "%+.3f"|format(d.low) }}..{{ "%+.3f"|format(d.high) }}){% if not loop.last %}, {% endif %}{% endfor %}.
</p>{% endif %}
{% if plots.accuracy %}<img src="data:image/png;base64,{{ plots.accuracy }}">{% endif %}
{% if plots.daily_accuracy %}<img src="data:image/png;base64,{{ plots.daily_accuracy }}">{% endif %}

<h2>Feature drift (PSI, bins of the champion's reference: its holdout)</h2>
<p>Prediction drift (best score per request against the champion's holdout):
{{ s.prediction_drift if s.prediction_drift is not none else "n/a" }}.
Drifted inputs (PSI &gt; {{ s.thresholds.psi_alert }}): {{ s.drifted_features|join(", ") or "none" }}.
Not alerted on nor plotted (calendar inputs: a short window is never a month's calendar):
{% for n in s.thresholds.drift_exempt %}{{ n }} {{ s.feature_drift.get(n, "n/a") }}
{%- if not loop.last %}, {% endif %}{% endfor %}.</p>
{% if plots.psi %}<img src="data:image/png;base64,{{ plots.psi }}">{% endif %}
{% if plots.distributions %}<h3>Largest shifts, share per bin</h3>
<img src="data:image/png;base64,{{ plots.distributions }}">{% endif %}

<h2>Training/serving skew</h2>
{% if s.skew.requests %}<p>{{ s.skew.requests }} served requests rebuilt offline (Feast's point-in-time
join at the same user and time): {{ "%.3f %%"|format(100 * s.skew.mismatch_rate) }} of
{{ s.skew.compared_values }} values differ; the candidate sets are the same in
{{ "%.1f %%"|format(100 * s.skew.same_candidates_share) }} of requests.</p>
{% if plots.skew %}<img src="data:image/png;base64,{{ plots.skew }}">{% endif %}
{% if s.skew.examples %}<table><tr><th>feature</th><th>request time</th><th>item</th><th>served</th>
<th>offline</th></tr>{% for x in s.skew.examples %}<tr><td>{{ x.feature }}</td><td>{{ x.request_ts }}</td>
<td>{{ x.item }}</td><td>{{ x.served }}</td><td>{{ x.offline }}</td></tr>{% endfor %}</table>{% endif %}
{% else %}<p>Not measured: {{ s.skew.note }}</p>{% endif %}

<h2>Data quality of the window's events</h2>
<p>{{ s.data_quality.events }} events, {{ "%.0f"|format(s.data_quality.events_per_day) }} a day against
{{ "%.0f"|format(s.data_quality.usual_events_per_day) }} usually
(ratio {{ "%.2f"|format(s.data_quality.volume_ratio) }}).
New values: {% for c, v in s.data_quality.new_categories.items() %}{{ c }}: {{ v|join(", ") }}
{%- if not loop.last %}; {% endif %}{% else %}none{% endfor %}.</p>
{% if plots.volume %}<img src="data:image/png;base64,{{ plots.volume }}">{% endif %}
<table><tr><th>column</th><th>null rate</th></tr>{% for c, r in s.data_quality.null_rates.items() %}
<tr><td>{{ c }}</td><td>{{ "%.2f %%"|format(100 * r) }}</td></tr>{% endfor %}</table>
<h3>Feature freshness</h3>
<table><tr><th>feature view</th><th>newest offline row</th><th>age at window end (h)</th>
<th>materialized online until</th></tr>{% for v, e in s.feature_freshness.items() %}<tr><td>{{ v }}</td>
<td>{{ e.newest_row }}</td><td>{{ "%.1f"|format(e.age_hours) }}</td><td>{{ e.materialized_until }}</td></tr>
{% endfor %}</table>
<p>Generated {{ s.generated_at }} by <code>feastflow monitor</code>.</p>
</body></html>
"""


def render_html(summary: dict[str, Any], drifts: list[Drift], prediction: Drift | None,
                daily: pd.DataFrame) -> str:
    """The report: alerts first, then accuracy, drift, skew and data quality, with plots."""
    from jinja2 import Environment

    metrics = sorted({m for e in summary["online_accuracy"].values() for m in e
                      if m.startswith("top")})
    template = Environment(autoescape=True).from_string(_TEMPLATE)
    return template.render(s=summary, plots=_plots(summary, drifts, prediction, daily),
                           metrics=metrics)
