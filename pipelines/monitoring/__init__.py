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

Layout: `window` (the served requests and the champion's reference), one module per check
(`drift`, `accuracy`, `skew`, `quality`), `report` (JSON, gauges, HTML, MLflow) and `run`
(`run_monitor`: the list of checks).
"""

from pipelines.monitoring.accuracy import (
    HitRate,
    accuracy_by_variant,
    accuracy_over_time,
    difference,
    hit_rate,
    labelled_answers,
)
from pipelines.monitoring.drift import Drift, calendar_weights, feature_drift, noise_floor, psi
from pipelines.monitoring.quality import data_quality, feature_freshness
from pipelines.monitoring.report import log_to_mlflow, prometheus_text, render_html
from pipelines.monitoring.run import CHECKS, MonitorResult, run_monitor
from pipelines.monitoring.skew import Skew, offline_replay, training_serving_skew
from pipelines.monitoring.window import (
    MonitorError,
    Observed,
    Section,
    Window,
    load_reference,
    load_served,
    model_answers,
    served_inputs,
)

__all__ = [
    "CHECKS",
    "Drift",
    "HitRate",
    "MonitorError",
    "MonitorResult",
    "Observed",
    "Section",
    "Skew",
    "Window",
    "accuracy_by_variant",
    "accuracy_over_time",
    "calendar_weights",
    "data_quality",
    "difference",
    "feature_drift",
    "feature_freshness",
    "hit_rate",
    "labelled_answers",
    "load_reference",
    "load_served",
    "log_to_mlflow",
    "model_answers",
    "noise_floor",
    "offline_replay",
    "prometheus_text",
    "psi",
    "render_html",
    "run_monitor",
    "served_inputs",
    "training_serving_skew",
]
