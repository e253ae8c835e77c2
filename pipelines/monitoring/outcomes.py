"""Online outcomes of a per-event model (classifier, regressor), once its labels are known.

A per-event answer is about the event of the same entity at the same time: the served request
(user_hash, request_ts) meets the logged event (entity, timestamp) of the same instant, and of
the same request context (`event_log.context`, e.g. the payment's transaction id) where the
answer logged it: one card may pay twice in the same second, once a fraud and once not. Its
label counts only from `timestamp + event_log.label_delay` on, measured on the log's own clock
(its newest event), so a fraud labelled a week later is neither read too early nor taken for a
genuine payment meanwhile: the answers still waiting for their label are counted as pending.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feastflow.spec import ModelSpec
from pipelines.features import event_log_connection
from pipelines.monitoring.accuracy import hit_rate
from pipelines.monitoring.window import Observed, Section
from pipelines.training import REFERENCE_LABEL

PENDING = "pending"  # the answer's label is not known yet at the log's newest event


def labelled_outcomes(served: pd.DataFrame, events_dir: Path, spec: ModelSpec
                      ) -> tuple[pd.DataFrame, pd.Timestamp]:
    """Served model answers with their event's label (NaN while unknown or without an event),
    whether it is known yet, and the log's newest event time (the clock labels are read on)."""
    log = spec.event_log
    con = event_log_connection(events_dir, log.timestamp)
    as_of = pd.Timestamp(con.execute(f'SELECT max("{log.timestamp}") FROM events').fetchall()[0][0])
    answers = served[served["fallback"].isna()].copy()
    answers["score"] = [float(s[0]) if len(s) else math.nan for s in answers["scores"]]
    if "context" not in answers.columns:
        answers["context"] = None
    con.register("answers_df", answers[["request_id", "request_ts", "user_hash", "context"]])
    delay = pd.Timedelta(log.label_delay).to_pytimedelta()
    same_context = "".join(f" AND {same}" for same in _same_context(con, log.context))
    matched = con.execute(f"""
        SELECT a.request_id, any_value(e."{log.label_column}")::DOUBLE AS label,
            any_value(e."{log.timestamp}" + ?::INTERVAL <= ?) AS known
        FROM answers_df a JOIN events e
          ON e."{log.entity}" = a.user_hash AND e."{log.timestamp}" = a.request_ts{same_context}
        GROUP BY a.request_id
    """, [delay, as_of.to_pydatetime()]).df()
    out = answers.merge(matched, on="request_id", how="left")
    out["matched"] = out["known"].notna()
    out["known"] = out["known"].eq(True)  # NaN (no event) is not known
    out.loc[~out["known"], "label"] = np.nan
    return out, as_of.tz_convert("UTC")


def _same_context(con: Any, context: list[str]) -> list[str]:
    """SQL conditions: each context column of the event equals the answer's logged value (read
    from its JSON as the column's type), or the answer did not log it."""
    types = {row[0]: row[1] for row in con.execute("DESCRIBE events").fetchall()}
    conditions = []
    for column in context:
        if column not in types:
            continue
        path = "'$.\"" + column.replace("'", "''") + "\"'"
        logged = f"json_extract_string(a.context, {path})"
        conditions.append(f'({logged} IS NULL OR TRY_CAST({logged} AS {types[column]}) '
                          f'= e."{column}")')
    return conditions


def outcome_figures(group: pd.DataFrame, spec: ModelSpec, k: int) -> dict[str, Any]:
    """One variant's answers: how many are labelled, pending or without an event, and its
    online metrics over the labelled ones (classifier: ROC AUC, average precision, label rate
    with its Wilson interval, mean score, precision of each day's top k; regressor: MAE, RMSE)."""
    from sklearn import metrics as skm

    from pipelines.protocols import precision_at_k_per_day

    known = group[group["known"]]
    labels, scores = known["label"].to_numpy(dtype=float), known["score"].to_numpy(dtype=float)
    out: dict[str, Any] = {
        "answers": len(group), "labelled": len(known),
        PENDING: int((group["matched"] & ~group["known"]).sum()),
        "without_event": int((~group["matched"]).sum()),
        "model_versions": sorted(group["model_version"].astype(str).unique().tolist()),
    }
    if spec.task == "regression":
        errors = scores - labels
        out.update({"mae": float(np.abs(errors).mean()) if len(known) else math.nan,
                    "rmse": float(np.sqrt((errors ** 2).mean())) if len(known) else math.nan,
                    "mean_label": float(labels.mean()) if len(known) else math.nan,
                    "mean_prediction": float(scores.mean()) if len(known) else math.nan})
        return out
    positives = int(labels.sum())
    both = 0 < positives < len(known)  # AUC and AP need both classes
    rate = hit_rate(positives, len(known))
    days = pd.to_datetime(known["request_ts"], utc=True).dt.floor("D").to_numpy()
    out.update({
        "label_rate": {"rate": rate.rate, "low": rate.low, "high": rate.high},
        "mean_score": float(scores.mean()) if len(known) else math.nan,
        "roc_auc": float(skm.roc_auc_score(labels, scores)) if both else math.nan,
        "average_precision": float(skm.average_precision_score(labels, scores))
        if both else math.nan,
        f"precision_at_{k}_per_day": precision_at_k_per_day(
            known["user_hash"].to_numpy(), days, labels, scores, k) if len(known) else math.nan,
    })
    return out


def outcomes_over_time(outcomes: pd.DataFrame, spec: ModelSpec, freq: str = "D") -> pd.DataFrame:
    """Per period and served variant: the label rate (classifier) or MAE (regressor) of the
    labelled answers, as the report's daily plot reads it (columns day, variant, rate, n)."""
    known = outcomes[outcomes["known"] & ~outcomes["shadow"].astype(bool)].copy()
    if known.empty:
        return pd.DataFrame(columns=["day", "variant", "rate", "n"])
    known["day"] = pd.to_datetime(known["request_ts"], utc=True).dt.floor(freq)
    known["value"] = ((known["score"] - known["label"]).abs() if spec.task == "regression"
                      else known["label"])
    return (known.groupby(["day", "variant"])["value"].agg(rate="mean", n="size")
            .reset_index())


def check_outcomes(observed: Observed) -> Section:
    """Per variant, the online metrics of the answers whose labels are known, against their
    minimums; the label rate (mean label) against the champion's holdout's."""
    spec, thresholds, window = observed.spec, observed.thresholds, observed.window
    outcomes, as_of = labelled_outcomes(observed.served, observed.settings.events_dir(spec.name),
                                        spec)
    k = thresholds.precision_k
    figures: dict[str, dict[str, Any]] = {}
    for (variant, shadow), group in outcomes.groupby(["variant", "shadow"], sort=True):
        figures[f"{variant} (shadow)" if shadow else str(variant)] = outcome_figures(group, spec, k)
    alerts: list[str] = []
    warnings: list[str] = []
    reference = observed.reference_predictions
    reference_label = (float(reference[REFERENCE_LABEL].mean()) if REFERENCE_LABEL in reference
                       and len(reference) else None)
    if reference_label is None:
        warnings.append("the champion's reference holds no labels (trained before they were "
                        "kept): its label rate is not compared")
    for variant, entry in figures.items():
        if "shadow" in variant or not entry["labelled"]:
            continue
        minimums = (("roc_auc", thresholds.min_online_auc),
                    ("average_precision", thresholds.min_online_ap))
        for metric, minimum in minimums:
            if metric in entry and entry[metric] < minimum:  # NaN (one class) never alerts
                alerts.append(f"online {metric}: {variant} {entry[metric]:.3f} < {minimum} "
                              f"(n={entry['labelled']})")
        if spec.task == "regression":
            if thresholds.max_online_mae is not None and entry["mae"] > thresholds.max_online_mae:
                alerts.append(f"online MAE: {variant} {entry['mae']:.3f} > "
                              f"{thresholds.max_online_mae} (n={entry['labelled']})")
            continue
        low, high = thresholds.label_rate_ratio
        rate = entry["label_rate"]
        ratio = rate["rate"] / reference_label if reference_label else math.nan
        if reference_label and not (rate["low"] <= reference_label <= rate["high"]) \
                and not low <= ratio <= high:
            alerts.append(f"label rate: {variant} {rate['rate']:.4f} is {ratio:.2f}x the "
                          f"holdout's {reference_label:.4f} (allowed {low}..{high}, and outside "
                          f"its 95 % interval {rate['low']:.4f}..{rate['high']:.4f})")
    freq = "h" if window.end - window.start <= pd.Timedelta(days=2) else "D"
    return Section({"online_outcomes": figures, "labels_known_until": as_of.isoformat(),
                    "reference_label_mean": reference_label,
                    "online_accuracy": {}, "challenger_minus_champion": None},
                   alerts, warnings,
                   plot_data={"daily": outcomes_over_time(outcomes, spec, freq)})
