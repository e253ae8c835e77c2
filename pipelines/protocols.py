"""Published evaluation protocols (model.yaml `protocols:`), run exactly as their authors did, so
that our model and the publication's own models are compared on the same folds in one run.

A protocol is prequential: each fold trains on `train_days` of events from its start, skips
`delay_days` (their labels are not known yet when the test starts), and tests on the next
`test_days`. Test days lose the entities with a positive label known by then (the Fraud
Detection Handbook removes cards known to be compromised: a fraud of the fold's training days
or of the delay days up to the day before minus the delay). Metrics per fold: ROC AUC, average
precision, and precision@k per day over entities (the book's card precision: each day's k
entities with the highest score, an entity found on one day left out of the next days), then
the mean over folds. Features come from the same Feast service and point-in-time join as
training; our model is fitted per fold with the spec's learner and parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from feastflow.ranking import LABEL, REQUEST_ID
from feastflow.settings import Settings
from feastflow.spec import ModelAlgoSpec, ModelSpec, ProtocolBaselineSpec, ProtocolSpec
from feastflow.store import open_store
from pipelines.datasets import SplitWindow, build_event_set, data_fingerprint, model_feature_names
from pipelines.features import event_log_connection
from pipelines.training import cached_frame, fit_model, score

Progress = Callable[[str], None]
DAY = "protocol_day"  # the event's UTC calendar day, the unit of precision@k
_ESTIMATORS: dict[str, Callable[..., Any]] = {
    "random_forest": RandomForestClassifier,
    "logistic_regression": LogisticRegression,
    "decision_tree": DecisionTreeClassifier,
}


@dataclass(frozen=True)
class FoldDays:
    """One fold's day boundaries (UTC midnights): training, then delay, then test."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp  # exclusive; the delay days follow
    test_start: pd.Timestamp
    test_end: pd.Timestamp  # exclusive

    @staticmethod
    def of(start: date, protocol: ProtocolSpec) -> FoldDays:
        """The fold whose training starts on `start`."""
        train_start = pd.Timestamp(start, tz="UTC")
        train_end = train_start + pd.Timedelta(days=protocol.train_days)
        test_start = train_end + pd.Timedelta(days=protocol.delay_days)
        return FoldDays(train_start, train_end, test_start,
                        test_start + pd.Timedelta(days=protocol.test_days))


def fold_split(rows: pd.DataFrame, fold: FoldDays, protocol: ProtocolSpec, entity: str
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fold's training rows and test rows (test days without known-positive entities)."""
    days = rows[DAY]
    train = rows[(days >= fold.train_start) & (days < fold.train_end)]
    test_days = []
    for day in pd.date_range(fold.test_start, fold.test_end, freq="D", inclusive="left"):
        on_day = rows[days == day]
        if protocol.exclude_known_positives:
            known_by = day - pd.Timedelta(days=protocol.delay_days)  # labels of days before it
            known = rows[(days >= fold.train_start) & (days < known_by) & (rows[LABEL] == 1)]
            on_day = on_day[~on_day[entity].isin(set(known[entity]))]
        test_days.append(on_day)
    return train, pd.concat(test_days)


def precision_at_k_per_day(entities: np.ndarray, days: np.ndarray, labels: np.ndarray,
                           scores: np.ndarray, k: int) -> float:
    """Mean over days of the share of positives among the day's k highest-scored entities (an
    entity scores its highest event and is positive if any event is); an entity counted as
    found is left out of the later days. Divides by k even when fewer entities exist."""
    frame = pd.DataFrame({"entity": entities, "day": days, "label": labels, "score": scores})
    found: set[Any] = set()
    per_day = []
    for _, on_day in frame.groupby("day", sort=True):
        on_day = on_day[~on_day["entity"].isin(found)]
        top = (on_day.groupby("entity")[["score", "label"]].max()
               .sort_values("score", ascending=False, kind="stable").head(k))
        hits = top.index[top["label"] == 1]
        found.update(hits)
        per_day.append(len(hits) / k)
    return float(np.mean(per_day)) if per_day else float("nan")


def fold_metrics(test: pd.DataFrame, scores: np.ndarray, entity: str, k: int) -> dict[str, float]:
    """ROC AUC, average precision and precision@k per day of one fold's test rows."""
    labels = test[LABEL].to_numpy(dtype=int)
    return {
        "auc": float(skm.roc_auc_score(labels, scores)),
        "ap": float(skm.average_precision_score(labels, scores)),
        f"cp{k}": precision_at_k_per_day(test[entity].to_numpy(), test[DAY].to_numpy(), labels,
                                         scores, k),
    }


def baseline_estimator(baseline: ProtocolBaselineSpec) -> Any:
    """The publication's model: its scikit-learn estimator, standardised inputs if it did."""
    estimator = _ESTIMATORS[baseline.kind](**baseline.params)
    return make_pipeline(StandardScaler(), estimator) if baseline.scale else estimator


def _baseline_scores(baseline: ProtocolBaselineSpec, train: pd.DataFrame, test: pd.DataFrame
                     ) -> np.ndarray:
    missing = [f for f in baseline.features if f not in train]
    if missing:
        raise KeyError(f"protocol baseline inputs {missing} are not features of the service")
    model = baseline_estimator(baseline)
    # the book fills what a window cannot say (no payment yet) with 0
    model.fit(train[baseline.features].astype(float).fillna(0.0), train[LABEL].astype(int))
    return model.predict_proba(test[baseline.features].astype(float).fillna(0.0))[:, 1]


def protocol_rows(settings: Settings, spec: ModelSpec, protocol: ProtocolSpec,
                  folds: list[date], progress: Progress = print) -> pd.DataFrame:
    """Every event the folds read, with its point-in-time features, label and day (cached)."""
    log = spec.event_log
    spans = [FoldDays.of(start, protocol) for start in folds]
    first, end = min(f.train_start for f in spans), max(f.test_end for f in spans)
    events_dir = settings.events_dir(spec.name)
    features_dir = settings.feature_tables_dir(spec.name)
    # keyed by what the rows hold: choosing the learner's parameters reuses the join
    joined = spec.model_copy(update={
        "model": ModelAlgoSpec(extra_features=spec.model.extra_features), "protocols": {}})
    fingerprint = data_fingerprint(events_dir, features_dir, SplitWindow(first, first, end),
                                   joined)
    cache = settings.home / "datasets" / spec.name / f"protocol-{fingerprint}.parquet"

    def build() -> pd.DataFrame:
        con = event_log_connection(events_dir, log.timestamp)
        requests = con.execute(
            f'SELECT * FROM all_events WHERE "{log.timestamp}" >= ? AND "{log.timestamp}" < ? '
            f'ORDER BY "{log.timestamp}", "{log.event_id}"',
            [first.to_pydatetime(), end.to_pydatetime()]).df()
        if requests.empty:
            raise ValueError(f"no events between {first:%Y-%m-%d} and {end:%Y-%m-%d}: the "
                             "protocol's folds are outside the event log")
        requests[log.timestamp] = pd.to_datetime(requests[log.timestamp], utc=True).astype(
            "datetime64[us, UTC]")
        requests.insert(0, REQUEST_ID, range(len(requests)))
        progress(f"point-in-time join of {len(requests):,} events "
                 f"({first:%Y-%m-%d} .. {end:%Y-%m-%d})")
        rows = build_event_set(open_store(settings, spec.name), requests, spec)
        own = requests.set_index(REQUEST_ID).loc[rows[REQUEST_ID]]
        for column in {log.entity, protocol.id_column} - set(rows.columns):
            rows[column] = own[column].to_numpy()
        rows[DAY] = own[log.timestamp].dt.floor("D").to_numpy()
        return rows

    return cached_frame(cache, build)


def run_protocol(settings: Settings, spec: ModelSpec, name: str, validation: bool = False,
                 progress: Progress = print) -> tuple[dict[str, Any], pd.DataFrame]:
    """Fit and score our model and the protocol's baselines on every fold; the report (mean and
    per fold) and every test prediction (id, fold start, our score, each baseline's)."""
    if name not in spec.protocols:
        known = ", ".join(spec.protocols) or "none"
        raise KeyError(f"use case {spec.name} declares no protocol {name!r} (declared: {known})")
    protocol = spec.protocols[name]
    folds = protocol.validation_folds if validation else protocol.test_folds
    if not folds:
        raise ValueError(f"protocol {name} declares no validation_folds")
    rows = protocol_rows(settings, spec, protocol, folds, progress)
    features = model_feature_names(open_store(settings, spec.name), spec)
    entity, k = spec.event_log.entity, protocol.top_k
    per_model: dict[str, list[dict[str, Any]]] = {"model": []}
    predictions = []
    for start in folds:
        train, test = fold_split(rows, FoldDays.of(start, protocol), protocol, entity)
        progress(f"fold {start}: {len(train):,} training events ({int(train[LABEL].sum())} "
                 f"positive), {len(test):,} test events ({int(test[LABEL].sum())} positive)")
        booster = fit_model(train, features, spec)
        scored = {"model": score(booster, test, spec.model.categorical)["score"].to_numpy()}
        for baseline_name, baseline in protocol.baselines.items():
            scored[baseline_name] = _baseline_scores(baseline, train, test)
        header = {"fold_train_start": start.isoformat(), "n_test": len(test),
                  "n_positive": int(test[LABEL].sum())}
        for model_name, scores in scored.items():
            per_model.setdefault(model_name, []).append(
                {**header, **fold_metrics(test, scores, entity, k)})
        predictions.append(pd.DataFrame({
            protocol.id_header or protocol.id_column: test[protocol.id_column].to_numpy(),
            "fold_train_start": start.isoformat(),
            **{"score" if n == "model" else n: s for n, s in scored.items()},
        }))
    metric_names = ["auc", "ap", f"cp{k}"]

    def summary(folds_of: list[dict[str, Any]]) -> dict[str, Any]:
        return {**{m: float(np.mean([f[m] for f in folds_of])) for m in metric_names},
                "folds": folds_of}

    report = {
        "use_case": spec.name, "task": spec.task, "protocol": name, "primary_metric": "ap",
        "model": summary(per_model.pop("model")),
        "baselines": {n: summary(f) for n, f in per_model.items()},
    }
    if validation:  # the test folds' report has exactly the shape the protocol's readers expect
        report["folds_kind"] = "validation"
    return report, pd.concat(predictions, ignore_index=True)


def write_predictions(predictions: pd.DataFrame, path: Path) -> None:
    """Every test prediction as CSV, written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    predictions.to_csv(tmp, index=False, float_format="%.8g")
    tmp.replace(path)
