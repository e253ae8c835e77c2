"""`run_monitor`: observe the window and the champion, run each check, write and log the report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feastflow.event_log import has_events
from feastflow.ranking import model_categories
from feastflow.settings import Settings
from feastflow.spec import ModelSpec
from pipelines.monitoring.accuracy import check_accuracy
from pipelines.monitoring.drift import check_drift
from pipelines.monitoring.outcomes import check_outcomes
from pipelines.monitoring.quality import check_quality
from pipelines.monitoring.report import log_to_mlflow, write_outputs
from pipelines.monitoring.skew import check_skew
from pipelines.monitoring.window import (
    MonitorError,
    Observed,
    Progress,
    Section,
    load_reference,
    load_served,
    model_answers,
)
from pipelines.training import REFERENCE_DAY

Check = Callable[[Observed], Section]


def check_online(observed: Observed) -> Section:
    """Ranked answers against the next event; per-event answers against their known labels."""
    return (check_outcomes if observed.spec.per_event else check_accuracy)(observed)


# Each check, in the report's order, with the line printed as it starts.
CHECKS: tuple[tuple[str, Check], ...] = (
    ("feature and prediction drift (PSI over the bins of the champion's reference)", check_drift),
    ("online accuracy per variant (ranked answers against the next event, per-event answers "
     "against their labels once known)", check_online),
    ("training/serving skew (served requests rebuilt with Feast's point-in-time join)",
     check_skew),
    ("data quality of the window's events and feature freshness", check_quality),
)


@dataclass
class MonitorResult:
    """The JSON summary, where the files went, and the alerts (empty: all within thresholds)."""

    summary: dict[str, Any]
    alerts: list[str]
    report: Path
    summary_file: Path
    metrics_file: Path
    mlflow_run_id: str | None = None  # the MLflow run holding the report (None: not logged)


def run_monitor(settings: Settings, spec: ModelSpec, out_dir: Path | None = None,
                since: datetime | None = None, until: datetime | None = None,
                progress: Progress = print) -> MonitorResult:
    """Compute every check over the window, write report.html, summary.json and metrics.prom,
    and log them to MLflow in the champion's experiment."""
    observed = observe(settings, spec, since, until, progress)
    sections: list[Section] = []
    for title, check in CHECKS:
        progress(title)
        sections.append(check(observed))
    summary = summarize(observed, sections)
    plot_data = {k: v for section in sections for k, v in section.plot_data.items()}
    report, summary_file, metrics_file = write_outputs(
        summary, spec, out_dir or settings.monitoring_dir(spec.name), plot_data)
    result = MonitorResult(summary, summary["alerts"], report, summary_file, metrics_file)
    result.mlflow_run_id = _log_to_mlflow(observed, result, progress)
    return result


def observe(settings: Settings, spec: ModelSpec, since: datetime | None = None,
            until: datetime | None = None, progress: Progress = print) -> Observed:
    """The window's served requests and the champion with its reference; MonitorError when
    monitoring cannot run on what is there."""
    from registry import lifecycle

    thresholds = spec.monitor
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
    reference_days = reference.pop(REFERENCE_DAY) if REFERENCE_DAY in reference else None
    return Observed(settings, spec, window, served, model_answers(served), champion, reference,
                    reference_days, reference_predictions,
                    model_categories(champion.booster, spec.model.categorical))


def summarize(observed: Observed, sections: list[Section]) -> dict[str, Any]:
    """The JSON summary: what was observed, each check's section, then every alert."""
    summary: dict[str, Any] = {
        "use_case": observed.spec.name,
        "window": {"start": observed.window.start.isoformat(),
                   "end": observed.window.end.isoformat()},
        "served_requests": len(observed.served),
        "model_answers": len(observed.answered),
        "champion_version": observed.champion.version,
        "thresholds": observed.thresholds.model_dump(),
    }
    for section in sections:
        summary.update(section.summary)
    summary["alerts"] = [alert for section in sections for alert in section.alerts]
    summary["warnings"] = [warning for section in sections for warning in section.warnings]
    summary["generated_at"] = datetime.now(UTC).isoformat()
    return summary


def _log_to_mlflow(observed: Observed, result: MonitorResult, progress: Progress) -> str | None:
    """Log the report to MLflow; a tracking store that refuses it is said, not fatal: the files
    are written and the checks' verdict stands."""
    settings, spec, champion = observed.settings, observed.spec, observed.champion
    try:
        run_id = log_to_mlflow(settings.tracking_uri, spec, champion.version, champion.run_id,
                               result.summary,
                               [result.report, result.summary_file, result.metrics_file])
    except Exception as e:  # MLflow's store raises its own errors, per backend
        progress(f"the report was not logged to MLflow: {e}")
        return None
    progress(f"report logged to MLflow: run {run_id} in experiment {spec.name}")
    return run_id
