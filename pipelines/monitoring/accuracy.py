"""Online accuracy per variant: served answers against the item the user really opened next."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from feastflow.spec import ModelSpec
from pipelines.features import event_log_connection
from pipelines.monitoring.window import Observed, Section


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


def check_accuracy(observed: Observed) -> Section:
    """Top-1 and top-k hit rates per variant against their minimums, and the A/B difference."""
    spec, thresholds, window = observed.spec, observed.thresholds, observed.window
    answers = labelled_answers(observed.served, observed.settings.events_dir(spec.name), spec)
    accuracy = accuracy_by_variant(answers, spec.top_k)
    topk = f"top{spec.top_k}"
    alerts: list[str] = []
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
    freq = "h" if window.end - window.start <= pd.Timedelta(days=2) else "D"
    return Section({"online_accuracy": accuracy, "challenger_minus_champion": ab}, alerts,
                   plot_data={"daily": accuracy_over_time(answers, spec.top_k, freq)})
