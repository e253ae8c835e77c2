"""Training/serving skew: served requests rebuilt offline with Feast's point-in-time join."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd

from feastflow.event_log import sql_string
from feastflow.ranking import REQUEST_ID
from feastflow.settings import Settings
from feastflow.spec import ModelSpec, MonitorSpec
from pipelines.features import event_log_connection
from pipelines.monitoring.window import Observed, Section, served_inputs


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
    """The rows Feast's point-in-time join gives for the served requests (by context): a
    ranking's candidates, or a per-event request's one row."""
    from feastflow.store import open_store
    from pipelines.datasets import build_set

    log = spec.event_log
    contexts = [orjson.loads(c) if isinstance(c, str) and c else {} for c in records["context"]]
    requests = pd.DataFrame({
        REQUEST_ID: np.arange(len(records)),
        log.entity: records["user_hash"].to_numpy(),
        log.timestamp: pd.to_datetime(records["request_ts"], utc=True).astype(
            "datetime64[us, UTC]").to_numpy(),
    })
    # the label is not needed here: build_event_set reads the label column, a ranking the item
    if spec.per_event:
        requests[log.label_column] = np.nan
    else:
        requests[log.item] = ""
    for name in log.context:
        requests[name] = [c.get(name) for c in contexts]
    return build_set(open_store(settings, spec.name), requests, spec)


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
    offline_inputs.insert(0, "item", "" if spec.per_event else offline[spec.event_log.item]
                          .to_numpy())
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


def _skew(settings: Settings, spec: ModelSpec, answered: pd.DataFrame, booster: Any,
          thresholds: MonitorSpec) -> Skew:
    with_context = answered[answered["context"].notna()]
    if with_context.empty:
        return Skew(0, 0, math.nan, math.nan, {}, note="no served request logged its context")
    # without real-time features every row comes from the batch tables: nothing trails
    lag = offline_tables_lag(settings, spec) if spec.realtime is not None else pd.Timedelta(0)
    if lag is None or lag > pd.Timedelta(seconds=1):
        return Skew(0, 0, math.nan, math.nan, {},
                    note="the offline feature tables are older than the event log: run "
                         "`feastflow features` before monitoring to measure skew")
    sample = with_context.sample(min(len(with_context), thresholds.skew_sample), random_state=0)
    return training_serving_skew(settings, spec, sample.sort_values("request_ts"), booster)


def check_skew(observed: Observed) -> Section:
    """The share of served values unequal to their offline point-in-time values."""
    thresholds = observed.thresholds
    skew = _skew(observed.settings, observed.spec, observed.answered, observed.champion.booster,
                 thresholds)
    alerts: list[str] = []
    if skew.requests and skew.mismatch_rate > thresholds.max_skew_rate:
        worst = [f"{k} {v:.1%}" for k, v in skew.per_feature.items() if v > 0][:5]
        alerts.append(f"training/serving skew: {skew.mismatch_rate:.2%} of served values differ "
                      f"from offline (max {thresholds.max_skew_rate:.0%}): " + ", ".join(worst))
    return Section({"skew": asdict(skew)}, alerts)
