"""The outputs: summary.json, Prometheus gauges, the HTML report with its plots, and MLflow."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feastflow.spec import ModelSpec
from pipelines.monitoring.drift import Drift

TEMPLATE = "templates/report.html.j2"  # package data of pipelines.monitoring

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
    outcome = gauge("online_outcome", "per-event answers whose label is known: their online "
                    "metric (roc_auc, average_precision, label_rate, mean_score, mae, ...)",
                    ["variant", "metric"])
    for variant, entry in (summary.get("online_outcomes") or {}).items():
        for metric, value in _outcome_values(entry).items():
            outcome.labels(**labels, variant=variant, metric=metric).set(value)
    skew = summary["skew"]
    gauge("skew_rate", "share of served values unequal to offline point-in-time values").labels(
        **labels).set(skew["mismatch_rate"])
    quality = summary["data_quality"]
    gauge("event_volume_ratio", "events per day against the 28 days before").labels(
        **labels).set(quality["volume_ratio"])
    gauge("new_categories", "values never seen before the window").labels(**labels).set(
        sum(len(v) for v in quality["new_categories"].values()))
    age = gauge("feature_age_seconds", "age of the newest offline row at the window's end",
                ["view"])
    for view, entry in summary["feature_freshness"].items():
        age.labels(**labels, view=view).set(entry["age_hours"] * 3600)
    gauge("alerts", "thresholds crossed in the last run").labels(**labels).set(
        len(summary["alerts"]))
    return generate_latest(registry)


OUTCOME_COUNTS = ("answers", "labelled", "pending", "without_event", "model_versions")


def _outcome_values(entry: dict[str, Any]) -> dict[str, float]:
    """A per-event variant's numbers by name: its counts and metrics, a rate by its value."""
    values = {m: v["rate"] if isinstance(v, dict) else v for m, v in entry.items()
              if m != "model_versions"}
    return {m: float(v) for m, v in values.items() if v is not None and math.isfinite(float(v))}


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
        outcomes = summary.get("online_outcomes")
        if not outcomes:
            ax.set_ylim(0, 1)
        ax.set_title("online top-k hit rate over the window" if not outcomes else
                     "MAE of the labelled answers" if "mae" in next(iter(outcomes.values()))
                     else "label rate of the labelled answers (their event's outcome)")
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


def report_template() -> str:
    """The report's Jinja template, read from the installed package (editable or not)."""
    return resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")


def render_html(summary: dict[str, Any], drifts: list[Drift], prediction: Drift | None,
                daily: pd.DataFrame) -> str:
    """The report: alerts first, then accuracy, drift, skew and data quality, with plots."""
    from jinja2 import Environment

    metrics = sorted({m for e in summary["online_accuracy"].values() for m in e
                      if m.startswith("top")})
    outcome_metrics = [m for m in next(iter((summary.get("online_outcomes") or {}).values()), {})
                       if m not in OUTCOME_COUNTS]
    template = Environment(autoescape=True).from_string(report_template())
    return template.render(s=summary, plots=_plots(summary, drifts, prediction, daily),
                           metrics=metrics, outcome_metrics=outcome_metrics)


def write_outputs(summary: dict[str, Any], spec: ModelSpec, out_dir: Path,
                  plot_data: dict[str, Any]) -> tuple[Path, Path, Path]:
    """Write summary.json, metrics.prom and report.html into `out_dir`; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_file = _write_atomic(out_dir / "summary.json",
                                 json.dumps(_json_safe(summary), indent=2).encode())
    metrics_file = _write_atomic(out_dir / "metrics.prom", prometheus_text(summary, spec))
    html = render_html(summary, plot_data["drifts"], plot_data["prediction"], plot_data["daily"])
    report = _write_atomic(out_dir / "report.html", html.encode())
    return report, summary_file, metrics_file


MONITORING_RUN_TAG = "feastflow.monitoring"  # "true" on every run the monitor logs
MONITORED_VERSION_TAG = "feastflow.monitored_version"  # the model version the run judged
LAST_MONITORING_RUN_TAG = "monitoring.last_run"  # on the model version: its newest report's run

def log_to_mlflow(tracking_uri: str, spec: ModelSpec, champion_version: str, champion_run_id: str,
                  summary: dict[str, Any], files: Sequence[Path]) -> str:
    """Log the report's files as artifacts of a new run in the experiment of the champion's
    training run, tagged with the version it judged; return the run's id.

    The model version gets a tag pointing at the run, so that the MLflow UI leads from a model
    to its newest report and back.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment_id = client.get_run(champion_run_id).info.experiment_id
    window_end = summary["window"]["end"]
    run = client.create_run(experiment_id, run_name=f"monitor-v{champion_version}-{window_end[:16]}",
                            tags={MONITORING_RUN_TAG: "true",
                                  "feastflow.use_case": spec.name,
                                  "feastflow.registered_model": spec.registered_model_name,
                                  MONITORED_VERSION_TAG: champion_version,
                                  "feastflow.monitored_run_id": champion_run_id,
                                  "feastflow.window_start": summary["window"]["start"],
                                  "feastflow.window_end": window_end,
                                  "feastflow.alerts": str(len(summary["alerts"]))})
    run_id = run.info.run_id
    try:
        for name, value in _headline_metrics(summary).items():
            client.log_metric(run_id, name, value)
        for path in files:
            client.log_artifact(run_id, str(path))
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    client.set_model_version_tag(spec.registered_model_name, champion_version,
                                 LAST_MONITORING_RUN_TAG, run_id)
    return run_id


def _headline_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers worth comparing across monitoring runs in the MLflow UI (finite ones)."""
    skew, quality = summary["skew"], summary["data_quality"]
    metrics: dict[str, Any] = {
        "alerts": len(summary["alerts"]),
        "drifted_features": len(summary["drifted_features"]),
        "prediction_psi": summary["prediction_drift"],
        "skew_rate": skew["mismatch_rate"] if skew["requests"] else None,
        "event_volume_ratio": quality["volume_ratio"],
        "served_requests": summary["served_requests"],
    }
    for variant, entry in summary["online_accuracy"].items():
        name = re.sub(r"[^\w]+", "_", variant).strip("_")  # "champion (shadow)": champion_shadow
        for metric, reading in entry.items():
            if metric.startswith("top"):
                metrics[f"online_{metric}.{name}"] = reading["rate"]
    for variant, entry in (summary.get("online_outcomes") or {}).items():
        name = re.sub(r"[^\w]+", "_", variant).strip("_")
        for metric, value in _outcome_values(entry).items():
            metrics[f"online_{metric}.{name}"] = value
    return {k: float(v) for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))}
