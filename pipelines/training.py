"""Train a use case's ranker from its spec, evaluate it on the time holdout, track it in MLflow."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import feast
import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd

from feastflow.ranking import (
    EVENT_TIMESTAMP,
    LABEL,
    REQUEST_ID,
    model_array,
    model_categories,
    model_matrix,
)
from feastflow.settings import Settings
from feastflow.spec import ModelSpec
from feastflow.store import open_store
from pipelines.datasets import (
    SplitWindow,
    build_ranking_set,
    data_fingerprint,
    ranking_feature_names,
    sample_requests,
    split_window,
)
from pipelines.evaluate import baseline_metrics, hit_rates
from pipelines.features import event_log_connection
from registry import lifecycle

Progress = Callable[[str], None]


@dataclass
class Datasets:
    """Requests and candidate rows of the training window and of the holdout."""

    window: SplitWindow
    fingerprint: str
    train_requests: pd.DataFrame
    train_rows: pd.DataFrame
    holdout_requests: pd.DataFrame
    holdout_rows: pd.DataFrame


def _cached(path: Path, build: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    if path.is_file():
        return pd.read_parquet(path)
    frame = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return frame


def build_datasets(settings: Settings, spec: ModelSpec, progress: Progress = print) -> Datasets:
    """Sample requests in both windows and join their point-in-time features (cached by input)."""
    con = event_log_connection(settings.events_dir)
    window = split_window(con, spec)
    features_dir = settings.features_dir / spec.name
    fingerprint = data_fingerprint(settings.events_dir, features_dir, window, spec)
    cache = settings.home / "datasets" / spec.name / fingerprint
    store = open_store(settings)
    split = spec.split
    train_requests = _cached(cache / "train_requests.parquet", lambda: sample_requests(
        con, window.train_start, window.holdout_start, split.max_train_events, split.seed))
    holdout_requests = _cached(cache / "holdout_requests.parquet", lambda: sample_requests(
        con, window.holdout_start, window.holdout_end, split.max_holdout_events, split.seed))
    progress(f"training set: {len(train_requests)} events, point-in-time join")
    train_rows = _cached(cache / "train_rows.parquet",
                         lambda: build_ranking_set(store, train_requests, spec))
    progress(f"holdout set: {len(holdout_requests)} events, point-in-time join")
    holdout_rows = _cached(cache / "holdout_rows.parquet",
                           lambda: build_ranking_set(store, holdout_requests, spec))
    return Datasets(window, fingerprint, train_requests, train_rows, holdout_requests,
                    holdout_rows)


def fit_ranker(rows: pd.DataFrame, features: list[str], spec: ModelSpec) -> lgb.Booster:
    """LightGBM lambdarank on groups of candidates, a fixed number of rounds.

    No early stopping: a validation slice small enough to spare stopped training after a few
    rounds on small worlds; the untouched time holdout is the honest judge.
    """
    has_answer = rows.groupby(REQUEST_ID)[LABEL].transform("max") == 1
    usable = rows[has_answer]  # a group without the right answer teaches a ranker nothing
    train_set = lgb.Dataset(
        model_matrix(usable, features, spec.model.categorical), label=usable[LABEL],
        group=usable.groupby(REQUEST_ID, sort=False).size().to_numpy(),
        categorical_feature=spec.model.categorical,
    )
    return lgb.train(spec.model.params, train_set, num_boost_round=spec.model.num_boost_round)


def score(booster: lgb.Booster, rows: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """The rows' request, item, label and the model's score."""
    matrix = model_matrix(rows, booster.feature_name(), categorical)
    return rows[[REQUEST_ID, LABEL]].assign(score=booster.predict(matrix, num_threads=1))


def holdout_report(booster: lgb.Booster, data: Datasets, spec: ModelSpec,
                   settings: Settings) -> dict[str, Any]:
    """The evaluate JSON: model and baseline hit rates on the holdout, and its time range."""
    scored = score(booster, data.holdout_rows, spec.model.categorical)
    model = hit_rates(scored, len(data.holdout_requests), ks=(1, spec.top_k))
    con = event_log_connection(settings.events_dir)
    baselines = baseline_metrics(con, data.holdout_requests, spec, k=spec.top_k)
    return {
        "top1": model["top1"],
        "top4": model[f"top{spec.top_k}"],
        "candidate_recall": model["candidate_recall"],
        "n_holdout_events": len(data.holdout_requests),
        "holdout_start": data.window.holdout_start.isoformat(),
        "holdout_end": data.window.holdout_end.isoformat(),
        "baselines": {name: {"top1": m["top1"], "top4": m[f"top{spec.top_k}"]}
                      for name, m in baselines.items()},
    }


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report as MLflow metrics: top1, top4, candidate_recall, <baseline>_top1/_top4."""
    out = {k: float(report[k]) for k in ("top1", "top4", "candidate_recall")}
    for name, values in report["baselines"].items():
        out.update({f"{name}_{k}": float(v) for k, v in values.items()})
    return out


def _plots(booster: lgb.Booster, report: dict[str, Any], out: Path) -> list[Path]:
    from matplotlib.figure import Figure  # no pyplot: no global backend, nothing to close

    importance = pd.Series(booster.feature_importance("gain"), index=booster.feature_name())
    importance = importance.sort_values().tail(25)
    fig = Figure(figsize=(7, 7))
    ax = fig.subplots()
    importance.plot.barh(ax=ax, color="#3b75af")
    ax.set_title("Feature importance (total gain)")
    fig.tight_layout()
    fig.savefig(out / "feature_importance.png", dpi=110)
    names = ["model", *report["baselines"]]
    top1 = [report["top1"], *(b["top1"] for b in report["baselines"].values())]
    top4 = [report["top4"], *(b["top4"] for b in report["baselines"].values())]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    x = np.arange(len(names))
    ax.bar(x - 0.2, top1, 0.4, label="top-1")
    ax.bar(x + 0.2, top4, 0.4, label="top-4")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1)
    ax.set_title(f"Holdout hit rate ({report['n_holdout_events']} events)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "holdout_vs_baselines.png", dpi=110)
    return [out / "feature_importance.png", out / "holdout_vs_baselines.png"]


REFERENCE_DIR = "reference"  # MLflow artifact folder of the monitoring reference
REFERENCE_FEATURES = "features.parquet"
REFERENCE_PREDICTIONS = "predictions.parquet"
REFERENCE_DAY = "__day"  # the request's UTC day, beside the inputs (monitoring's noise floor)


def encoded_inputs(rows: pd.DataFrame, booster: lgb.Booster, categorical: list[str]
                   ) -> np.ndarray:
    """The model's inputs as the server encodes them (categories as codes), one row per row."""
    names = booster.feature_name()
    columns = {name: rows[name].tolist() for name in names if name in rows}
    return model_array(columns, len(rows), names, model_categories(booster, categorical))


def top_scores(scored: pd.DataFrame) -> pd.DataFrame:
    """Each request's best score (the score of what the server would answer first)."""
    return scored.groupby(REQUEST_ID, sort=False)["score"].max().rename("top_score").to_frame()


def write_reference(booster: lgb.Booster, data: Datasets, spec: ModelSpec, out: Path,
                    max_rows: int = 150_000) -> Path:
    """The monitoring reference: the holdout's inputs (a sample) and each request's best score.

    The holdout rather than the training rows: it is the newest data the model was judged on,
    and training rows start a week after the first event, when 28-day counts are still filling
    up, so every count would look drifted against them.
    """
    folder = out / REFERENCE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    rows = data.holdout_rows
    if len(rows) > max_rows:
        rows = rows.sample(max_rows, random_state=spec.split.seed).sort_index()
    inputs = pd.DataFrame(encoded_inputs(rows, booster, spec.model.categorical),
                          columns=booster.feature_name())
    inputs[REFERENCE_DAY] = pd.to_datetime(rows[EVENT_TIMESTAMP], utc=True).dt.floor("D").to_numpy()
    inputs.to_parquet(folder / REFERENCE_FEATURES)
    scored = score(booster, data.holdout_rows, spec.model.categorical)
    top_scores(scored).to_parquet(folder / REFERENCE_PREDICTIONS)
    return folder


@dataclass
class TrainResult:
    """What `feastflow train` produced."""

    version: str
    run_id: str
    report: dict[str, Any]
    fingerprint: str
    n_train_events: int
    n_train_rows: int


def train_use_case(settings: Settings, spec: ModelSpec, progress: Progress = print
                   ) -> TrainResult:
    """Build the sets, fit, evaluate on the holdout, log one MLflow run, register a challenger."""
    data = build_datasets(settings, spec, progress)
    store = open_store(settings)
    features = ranking_feature_names(store, spec)
    progress(f"fitting {spec.model.algorithm} on {len(data.train_rows)} candidate rows")
    booster = fit_ranker(data.train_rows, features, spec)
    report = holdout_report(booster, data, spec, settings)
    metrics = flat_metrics(report)
    lifecycle.configure(settings.tracking_uri, settings.artifacts_uri, spec.name)
    tags = {
        "feature_service.entity": spec.features.entity_service,
        "feature_service.ranking": spec.features.ranking_service,
        "data_fingerprint": data.fingerprint,
        "train_start": data.window.train_start.isoformat(),
        "holdout_start": data.window.holdout_start.isoformat(),
        "holdout_end": data.window.holdout_end.isoformat(),
        "lib.lightgbm": lgb.__version__,
        "lib.feast": feast.__version__,
    }
    with mlflow.start_run(run_name=f"{spec.name}-{data.fingerprint}") as run:
        mlflow.set_tags(tags)
        mlflow.log_params({
            **{f"lgb.{k}": v for k, v in spec.model.params.items()},
            "num_boost_round": spec.model.num_boost_round,
            "n_train_events": len(data.train_requests),
            "n_train_rows": len(data.train_rows),
            "n_features": len(features),
            "max_candidates": spec.candidates.max_candidates,
        })
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            for plot in _plots(booster, report, Path(tmp)):
                mlflow.log_artifact(str(plot), "plots")
            (Path(tmp) / "holdout_report.json").write_text(json.dumps(report, indent=2))
            mlflow.log_artifact(str(Path(tmp) / "holdout_report.json"))
            mlflow.log_artifacts(str(write_reference(booster, data, spec, Path(tmp))),
                                 REFERENCE_DIR)
        mlflow.log_artifact(str(spec.source_dir / "model.yaml"))
        example = model_matrix(data.holdout_rows.head(5), features, spec.model.categorical)
        # Served natively with pandas categoricals, not through pyfunc: skip pyfunc validation.
        model_info = mlflow.lightgbm.log_model(
            booster, name="model", input_example=example, validate_serving_input=False,
            pip_requirements=[f"lightgbm=={lgb.__version__}", f"pandas=={pd.__version__}"],
        )
        run_id = run.info.run_id
    registered = lifecycle.register_challenger(
        spec.registered_model_name, model_info.model_uri, run_id, metrics, tags
    )
    return TrainResult(registered.version, run_id, report, data.fingerprint,
                       len(data.train_requests), len(data.train_rows))


def evaluate_alias(settings: Settings, spec: ModelSpec, alias: str = lifecycle.CHAMPION,
                   progress: Progress = print) -> dict[str, Any]:
    """The holdout report of the aliased model version, with its version number."""
    lifecycle.configure(settings.tracking_uri, settings.artifacts_uri, spec.name)
    loaded = lifecycle.load_by_alias(spec.registered_model_name, alias)
    data = build_datasets(settings, spec, progress)
    report = holdout_report(loaded.booster, data, spec, settings)
    keys = ["top1", "top4", "candidate_recall", "n_holdout_events", "holdout_start",
            "holdout_end"]
    return {**{k: report[k] for k in keys}, "model_version": loaded.version,
            "baselines": report["baselines"]}


@dataclass
class RetrainResult:
    """What `feastflow retrain` did: the new challenger, both models' metrics, the decision."""

    trained: TrainResult
    champion_version: str | None
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    decision: lifecycle.GateDecision


def retrain_use_case(settings: Settings, spec: ModelSpec, progress: Progress = print
                     ) -> RetrainResult:
    """Train on the latest window, judge champion and challenger on the same most recent days,
    promote only if the spec's gate passes, and record why on both model versions."""
    latest = spec.retrain_spec()
    trained = train_use_case(settings, latest, progress)
    champion = lifecycle.alias_version(spec.registered_model_name, lifecycle.CHAMPION)
    challenger_metrics = flat_metrics(trained.report)
    champion_metrics = None
    if champion is not None:
        progress(f"champion v{champion} on the same holdout")
        loaded = lifecycle.load_by_alias(spec.registered_model_name, lifecycle.CHAMPION)
        data = build_datasets(settings, latest, progress)  # the challenger's, from the cache
        champion_metrics = flat_metrics(holdout_report(loaded.booster, data, latest, settings))
    report = trained.report
    evidence = {"judged_on": f"{report['holdout_start']} .. {report['holdout_end']}",
                "n_holdout_events": report["n_holdout_events"],
                "train_days": latest.split.train_days, "data_fingerprint": trained.fingerprint}
    decision = lifecycle.decide(spec.registered_model_name, spec.gate, trained.version,
                                challenger_metrics, champion, champion_metrics, evidence)
    return RetrainResult(trained, champion, challenger_metrics, champion_metrics, decision)
