"""Train a use case from its spec, evaluate it on the time holdout beside its declared baselines,
track it in MLflow and register it as challenger. Every task goes through the same steps:
sample requests by time, join their point-in-time features, fit, score the holdout, compare.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import feast
import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from mlflow.data.pandas_dataset import from_pandas
from mlflow.data.sources import LocalArtifactDatasetSource  # type: ignore[attr-defined]
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, DataType, Schema, TensorSpec

from feastflow.ranking import (
    EVENT_TIMESTAMP,
    LABEL,
    REQUEST_ID,
    model_array,
    model_categories,
    model_matrix,
)
from feastflow.settings import Settings
from feastflow.spec import ModelSpec, lower_is_better
from feastflow.store import open_store
from pipelines.baselines import all_baseline_scores
from pipelines.datasets import (
    SplitWindow,
    build_set,
    data_fingerprint,
    labelled_by,
    model_feature_names,
    sample_requests,
    split_window,
)
from pipelines.evaluate import baseline_metrics
from pipelines.features import event_log_connection
from pipelines.metrics import event_metrics, hit_rates
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
    _baselines: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def baseline_scores(self, spec: ModelSpec, inputs: list[str]) -> dict[str, np.ndarray]:
        """Every declared baseline fitted on the training rows, scored on the holdout (once)."""
        if self._baselines is None:
            self._baselines = all_baseline_scores(spec, self.train_rows, self.holdout_rows, inputs)
        return self._baselines


def cached_frame(path: Path, build: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """The frame stored at `path`, else `build()` written there atomically (datasets' cache)."""
    if path.is_file():
        return pd.read_parquet(path)
    frame = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return frame


def build_datasets(settings: Settings, spec: ModelSpec, progress: Progress = print) -> Datasets:
    """Sample requests in both windows and join their point-in-time features (cached by input).

    Training requests stop where their labels stop being known at the holdout's start
    (`label_delay`): the model never learns from a label the holdout's first day could not see.
    """
    events_dir = settings.events_dir(spec.name)
    con = event_log_connection(events_dir, spec.event_log.timestamp)
    window = split_window(con, spec)
    features_dir = settings.feature_tables_dir(spec.name)
    fingerprint = data_fingerprint(events_dir, features_dir, window, spec)
    cache = settings.home / "datasets" / spec.name / fingerprint
    store = open_store(settings, spec.name)
    split = spec.split
    train_end = labelled_by(spec, window.holdout_start)
    if train_end <= window.train_start:
        raise ValueError(f"label_delay {spec.event_log.label_delay} leaves no training events "
                         f"between {window.train_start:%Y-%m-%d} and {window.holdout_start:%Y-%m-%d}")
    train_requests = cached_frame(cache / "train_requests.parquet", lambda: sample_requests(
        con, window.train_start, train_end, split.max_train_events, split.seed, spec))
    holdout_requests = cached_frame(cache / "holdout_requests.parquet", lambda: sample_requests(
        con, window.holdout_start, window.holdout_end, split.max_holdout_events, split.seed, spec))
    if train_requests.empty or holdout_requests.empty:
        raise ValueError(f"no {'training' if train_requests.empty else 'holdout'} events in "
                         f"{window.as_dict()}: widen the split in model.yaml")
    progress(f"training set: {len(train_requests)} events, point-in-time join")
    train_rows = cached_frame(cache / "train_rows.parquet",
                         lambda: build_set(store, train_requests, spec))
    progress(f"holdout set: {len(holdout_requests)} events, point-in-time join")
    holdout_rows = cached_frame(cache / "holdout_rows.parquet",
                           lambda: build_set(store, holdout_requests, spec))
    return Datasets(window, fingerprint, train_requests, train_rows, holdout_requests,
                    holdout_rows)


def fit_model(rows: pd.DataFrame, features: list[str], spec: ModelSpec) -> lgb.Booster:
    """LightGBM with the spec's parameters: lambdarank on candidate groups (ranking), else one row
    per event with the spec's objective; a fixed number of rounds.

    No early stopping: a validation slice small enough to spare stopped training after a few
    rounds on small worlds; the untouched time holdout is the honest judge.
    """
    if not spec.per_event:
        has_answer = rows.groupby(REQUEST_ID)[LABEL].transform("max") == 1
        rows = rows[has_answer]  # a group without the right answer teaches a ranker nothing
    rows = rows[rows[LABEL].notna()]
    group = rows.groupby(REQUEST_ID, sort=False).size().to_numpy() if not spec.per_event else None
    matrix = model_matrix(rows, features, spec.model.categorical)
    model = spec.model
    learners = [(model.params, model.num_boost_round, 1.0)] if not model.blend else [
        ({**model.params, **m.params}, m.num_boost_round or model.num_boost_round, m.weight)
        for m in model.blend]
    boosters = []
    for params, rounds, _ in learners:  # a Dataset per learner: its binning follows its params
        train_set = lgb.Dataset(matrix, label=rows[LABEL], group=group,
                                categorical_feature=model.categorical or "auto")
        boosters.append(lgb.train(params, train_set, num_boost_round=rounds))
    if len(boosters) == 1:
        return boosters[0]
    return blend_boosters(boosters, [weight for _, _, weight in learners])


def blend_boosters(boosters: list[lgb.Booster], weights: list[float]) -> lgb.Booster:
    """One LightGBM model whose raw score is the weighted mean of the boosters' raw scores
    (log-odds for a binary objective): their trees, each leaf value scaled by its booster's
    weight. Being one native model, the blend is registered, checksummed and served as any.

    The boosters must share their inputs and objective, and grow one tree per iteration with
    constant leaves (no multiclass, random-forest averaging or linear trees).
    """
    texts = [booster.model_to_string() for booster in boosters]
    heads = [text[:text.index("\nTree=")] for text in texts]
    signature = [[line for line in head.splitlines() if line.startswith(
        ("feature_names=", "objective=", "num_tree_per_iteration="))] for head in heads]
    if any(s != signature[0] for s in signature):
        raise ValueError("blend: the learners differ in inputs or objective")
    if "num_tree_per_iteration=1" not in signature[0] or any(
            "average_output" in head for head in heads):
        raise ValueError("blend: only learners of one boosted tree per iteration")
    total = sum(weights)
    trees: list[str] = []
    for text, weight in zip(texts, weights, strict=True):
        body = text[text.index("\nTree=") + 1:text.index("\nend of trees")]
        for tree in body.split("\n\n\n"):
            if not tree.strip():
                continue
            if "is_linear=1" in tree:
                raise ValueError("blend: linear trees cannot be scaled")
            lines = tree.strip("\n").splitlines()
            lines[0] = f"Tree={len(trees)}"
            for i, line in enumerate(lines):
                key, _, values = line.partition("=")
                if key in ("leaf_value", "internal_value"):
                    lines[i] = key + "=" + " ".join(
                        repr(float(v) * weight / total) for v in values.split())
            trees.append("\n".join(lines))
    head = "\n".join(line for line in heads[0].splitlines()
                     if not line.startswith("tree_sizes="))  # sizes of the members' trees
    tail = texts[0][texts[0].index("\nend of trees"):]
    return lgb.Booster(model_str=head + "\n\n" + "\n\n\n".join(trees) + "\n\n" + tail)


def score(booster: lgb.Booster, rows: pd.DataFrame, categorical: list[str]) -> pd.DataFrame:
    """The rows' request, label and the model's score."""
    matrix = model_matrix(rows, booster.feature_name(), categorical)
    return rows[[REQUEST_ID, LABEL]].assign(score=booster.predict(matrix, num_threads=1))


def holdout_report(booster: lgb.Booster, data: Datasets, spec: ModelSpec,
                   settings: Settings) -> dict[str, Any]:
    """The evaluate JSON: the model's and every baseline's metrics on the same holdout."""
    scored = score(booster, data.holdout_rows, spec.model.categorical)
    if spec.per_event:
        model, baselines = _event_report(booster, scored, data, spec)
    else:
        k = spec.top_k
        found = hit_rates(scored, len(data.holdout_requests), ks=(1, k))
        wanted = dict.fromkeys(["top1", f"top{k}", *spec.metrics, spec.primary])
        model = {m: found[m] for m in wanted}
        con = event_log_connection(settings.events_dir(spec.name), spec.event_log.timestamp)
        baselines = {name: {m: v for m, v in values.items() if m in model}
                     for name, values in baseline_metrics(con, data.holdout_requests, spec,
                                                          k=k).items()}
    return {
        "use_case": spec.name, "task": spec.task, "primary_metric": spec.primary,
        "model": model, "baselines": baselines, "n_holdout": len(data.holdout_requests),
        "holdout_start": data.window.holdout_start.isoformat(),
        "holdout_end": data.window.holdout_end.isoformat(),
    }


def _event_report(booster: lgb.Booster, scored: pd.DataFrame, data: Datasets, spec: ModelSpec
                  ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    holdout = data.holdout_rows
    labels = holdout[LABEL].to_numpy(dtype=float)
    days = pd.to_datetime(holdout[EVENT_TIMESTAMP], utc=True).dt.floor("D").to_numpy()
    model = event_metrics(spec, labels, scored["score"].to_numpy(), days)
    inputs = booster.feature_name()
    baselines = {name: event_metrics(spec, labels, values, days) for name, values
                 in data.baseline_scores(spec, inputs).items()}
    return model, baselines


def holdout_predictions(booster: lgb.Booster, data: Datasets, spec: ModelSpec) -> pd.DataFrame:
    """Every holdout row's label and the model's and each baseline's score: anyone can recompute
    the report from it."""
    rows = data.holdout_rows
    log = spec.event_log
    requests = data.holdout_requests.set_index(REQUEST_ID)
    out = pd.DataFrame({
        REQUEST_ID: rows[REQUEST_ID].to_numpy(),
        log.event_id: requests[log.event_id].loc[rows[REQUEST_ID]].to_numpy(),
        log.timestamp: requests[log.timestamp].loc[rows[REQUEST_ID]].to_numpy(),
        LABEL: rows[LABEL].to_numpy(),
        "model": score(booster, rows, spec.model.categorical)["score"].to_numpy(),
    })
    if not spec.per_event:
        out.insert(1, log.item, rows[log.item].to_numpy())
        return out
    for name, values in data.baseline_scores(spec, booster.feature_name()).items():
        out[f"baseline.{name}"] = values
    return out


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report as MLflow metrics: `<metric>` for the model, `<baseline>.<metric>` for each
    baseline (the registry keeps them on the version; the gate reads them back)."""
    out = {k: float(v) for k, v in report["model"].items()}
    for name, values in report["baselines"].items():
        out.update({f"{name}.{k}": float(v) for k, v in values.items()})
    return out


def _importance_plot(booster: lgb.Booster, out: Path) -> Path:
    from matplotlib.figure import Figure  # no pyplot: no global backend, nothing to close

    importance = pd.Series(booster.feature_importance("gain"), index=booster.feature_name())
    importance = importance.sort_values().tail(25)
    fig = Figure(figsize=(7, 7))
    ax = fig.subplots()
    importance.plot.barh(ax=ax, color="#3b75af")
    ax.set_title("Feature importance (total gain)")
    fig.tight_layout()
    fig.savefig(out / "feature_importance.png", dpi=110)
    return out / "feature_importance.png"


def _comparison_plot(report: dict[str, Any], out: Path) -> Path:
    from matplotlib.figure import Figure

    names = ["model", *report["baselines"]]
    metrics = list(report["model"])
    fig = Figure(figsize=(1.6 + 1.1 * len(names) * max(1, len(metrics)) / 2, 4))
    ax = fig.subplots()
    x = np.arange(len(names))
    width = 0.8 / len(metrics)
    for j, metric in enumerate(metrics):
        values = [report["model"][metric], *(b.get(metric, np.nan)
                                             for b in report["baselines"].values())]
        ax.bar(x + (j - (len(metrics) - 1) / 2) * width, values, width, label=metric)
    ax.set_xticks(x, names)
    ax.set_title(f"Holdout: model vs baselines ({report['n_holdout']} events)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "holdout_vs_baselines.png", dpi=110)
    return out / "holdout_vs_baselines.png"


def _task_plots(predictions: pd.DataFrame, spec: ModelSpec, out: Path) -> list[Path]:
    from matplotlib.figure import Figure
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve, roc_curve

    if not spec.per_event:
        return []
    y = predictions[LABEL].to_numpy(dtype=float)
    scores = {"model": predictions["model"].to_numpy(),
              **{c.removeprefix("baseline."): predictions[c].to_numpy()
                 for c in predictions if c.startswith("baseline.")}}
    paths = []
    if spec.task == "binary_classification":
        fig = Figure(figsize=(11, 4))
        roc, pr, calibration = fig.subplots(1, 3)
        for name, values in scores.items():
            fpr, tpr, _ = roc_curve(y, values)
            roc.plot(fpr, tpr, label=name)
            precision, recall, _ = precision_recall_curve(y, values)
            pr.plot(recall, precision, label=name)
        observed, predicted = calibration_curve(y, scores["model"], n_bins=10, strategy="quantile")
        calibration.plot(predicted, observed, marker="o", label="model")
        calibration.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        for ax, title, xl, yl in ((roc, "ROC", "false positive rate", "true positive rate"),
                                  (pr, "precision-recall", "recall", "precision"),
                                  (calibration, "calibration", "predicted", "observed")):
            ax.set_title(title)
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
        roc.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "roc_pr_calibration.png", dpi=110)
        paths.append(out / "roc_pr_calibration.png")
    else:
        fig = Figure(figsize=(10, 4))
        scatter, residuals = fig.subplots(1, 2)
        scatter.scatter(y, scores["model"], s=4, alpha=0.4)
        top = np.nanpercentile(y, 99)
        scatter.plot([0, top], [0, top], "k--", linewidth=0.8)
        scatter.set_xlim(0, top)
        scatter.set_ylim(0, top)
        scatter.set_xlabel("actual")
        scatter.set_ylabel("predicted")
        scatter.set_title("predicted vs actual")
        errors = scores["model"] - y
        residuals.hist(np.clip(errors, *np.nanpercentile(errors, [1, 99])), bins=60)
        residuals.set_title("residuals (model - actual), 1-99 %")
        fig.tight_layout()
        fig.savefig(out / "residuals.png", dpi=110)
        paths.append(out / "residuals.png")
    return paths


REFERENCE_DIR = "reference"  # MLflow artifact folder of the monitoring reference
REFERENCE_FEATURES = "features.parquet"
REFERENCE_PREDICTIONS = "predictions.parquet"
REFERENCE_LABEL = "label"  # per-event holdouts: each request's label beside its score
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
    predictions = top_scores(scored)
    if spec.per_event:  # what monitoring compares the known labels' rate (or mean) with
        predictions[REFERENCE_LABEL] = scored.groupby(REQUEST_ID, sort=False)[LABEL].first()
    predictions.to_parquet(folder / REFERENCE_PREDICTIONS)
    return folder


def _metric_key(name: str) -> str:
    # MLflow metric names: a baseline's metric reads `baseline.<name>.<metric>` in the UI
    return f"baseline.{name}" if "." in name else name


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
    if spec.retrieval is not None:  # the retrieval-then-rank shape runs its own protocol
        from pipelines.retrieval import train_retrieval

        return train_retrieval(settings, spec, progress)  # type: ignore[no-any-return]
    data = build_datasets(settings, spec, progress)
    store = open_store(settings, spec.name)
    features = model_feature_names(store, spec)
    progress(f"fitting {spec.model.algorithm} ({spec.task}) on {len(data.train_rows)} rows")
    booster = fit_model(data.train_rows, features, spec)
    report = holdout_report(booster, data, spec, settings)
    metrics = flat_metrics(report)
    registry = lifecycle.Registry(settings.tracking_uri, settings.artifacts_uri, create=True)
    services = ({"feature_service": spec.features.service} if spec.per_event else
                {"feature_service.entity": spec.features.entity_service,
                 "feature_service.ranking": spec.features.ranking_service})
    tags = {
        **{k: str(v) for k, v in services.items()},
        "task": spec.task,
        "primary_metric": spec.primary,
        "label_delay_seconds": str(int(spec.event_log.label_delay.total_seconds())),
        "data_fingerprint": data.fingerprint,
        "train_start": data.window.train_start.isoformat(),
        "holdout_start": data.window.holdout_start.isoformat(),
        "holdout_end": data.window.holdout_end.isoformat(),
        "lib.lightgbm": lgb.__version__,
        "lib.feast": feast.__version__,
    }
    predictions = holdout_predictions(booster, data, spec)
    tags.update(review_budget_tags(spec, predictions["model"].tolist(), data.window))
    with registry.run(spec.name, f"{spec.name}-{data.fingerprint}") as run:
        mlflow.set_tags(tags)
        log_lineage(settings, spec, data)
        mlflow.log_params({
            **{f"lgb.{k}": v for k, v in spec.model.params.items()},
            "num_boost_round": spec.model.num_boost_round,
            **({"blend": json.dumps([m.model_dump() for m in spec.model.blend])}
               if spec.model.blend else {}),
            "n_train_events": len(data.train_requests),
            "n_train_rows": len(data.train_rows),
            "n_features": len(features),
            **({"max_candidates": spec.candidates.max_candidates} if spec.candidates else {}),
        })
        mlflow.log_metrics({_metric_key(k): v for k, v in metrics.items()})
        with tempfile.TemporaryDirectory() as tmp:
            for plot in [_importance_plot(booster, Path(tmp)), _comparison_plot(report, Path(tmp)),
                         *_task_plots(predictions, spec, Path(tmp))]:
                mlflow.log_artifact(str(plot), "plots")
            (Path(tmp) / "holdout_report.json").write_text(json.dumps(report, indent=2))
            mlflow.log_artifact(str(Path(tmp) / "holdout_report.json"))
            predictions.to_parquet(Path(tmp) / "holdout_predictions.parquet", index=False)
            mlflow.log_artifact(str(Path(tmp) / "holdout_predictions.parquet"))
            mlflow.log_artifacts(str(write_reference(booster, data, spec, Path(tmp))),
                                 REFERENCE_DIR)
        mlflow.log_artifact(str(spec.source_dir / "model.yaml"))
        run_id = run.info.run_id
        example = model_matrix(data.holdout_rows.head(5), features, spec.model.categorical)
        example = example.astype({name: object for name in spec.model.categorical})  # as JSON
        model_uri = registry.log_lightgbm(
            run_id, booster, spec.model.categorical, model_signature(features,
                                                                     spec.model.categorical),
            example, [f"lightgbm=={lgb.__version__}", f"pandas=={pd.__version__}"])
    registered = registry.register_challenger(
        spec.registered_model_name, model_uri, run_id, metrics, tags
    )
    return TrainResult(registered.version, run_id, report, data.fingerprint,
                       len(data.train_requests), len(data.train_rows))


def review_budget_tags(spec: ModelSpec, scores: list[float], window: SplitWindow
                       ) -> dict[str, str]:
    """The version's review band start for the spec's daily review budget, chosen on its
    holdout scores, and the reviews a day it gave there (none without a budget)."""
    rule = spec.serving.decision
    days = (window.holdout_end - window.holdout_start).total_seconds() / 86_400
    chosen = rule.budget_review_from(scores, days) if rule is not None and scores else None
    if chosen is None:
        return {}
    review_from, per_day = chosen
    return {lifecycle.REVIEW_FROM_TAG: repr(review_from),
            "decision.reviews_per_day_holdout": f"{per_day:.2f}",
            "decision.review_budget_per_day": str(rule.review_budget_per_day)}


def model_signature(features: list[str], categorical: list[str]) -> ModelSignature:
    """The model's MLflow signature: every input optional (a feature may be missing), numbers as
    doubles, categorical inputs as strings (the model's pyfunc encodes them as training did); one
    score per row out."""
    inputs: list[ColSpec | TensorSpec] = [
        ColSpec(DataType.string if name in categorical else DataType.double, name, required=False)
        for name in features]
    return ModelSignature(Schema(inputs), Schema([TensorSpec(np.dtype("float64"), (-1,))]))


def log_lineage(settings: Settings, spec: ModelSpec, data: Datasets) -> None:
    """Log the training and holdout sets as the active run's inputs: their source (the event log
    and feature tables) and digest (the data fingerprint the dataset cache is keyed by)."""
    source = LocalArtifactDatasetSource(settings.events_dir(spec.name).as_uri())
    for rows, context in ((data.train_rows, "training"), (data.holdout_rows, "evaluation")):
        dataset = from_pandas(rows, source=source, targets=LABEL,
                                          name=f"{spec.name}-{context}", digest=data.fingerprint)
        with warnings.catch_warnings():
            # MLflow's hint that an integer column cannot hold a missing value is about model
            # signatures (ours declares doubles); a data set's schema only records its dtypes.
            warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
            mlflow.log_input(dataset, context=context, tags={
                "feature_tables": settings.feature_tables_dir(spec.name).as_uri(),
                **data.window.as_dict()})


def evaluate_alias(settings: Settings, spec: ModelSpec, alias: str = lifecycle.CHAMPION,
                   progress: Progress = print) -> dict[str, Any]:
    """The holdout report of the aliased model version, with its version number."""
    registry = lifecycle.Registry(settings.tracking_uri, settings.artifacts_uri)
    loaded = registry.load_by_alias(spec.registered_model_name, alias)
    data = build_datasets(settings, spec, progress)
    report = holdout_report(loaded.booster, data, spec, settings)
    return {**report, "model_version": loaded.version}


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
    registry = lifecycle.Registry(settings.tracking_uri, settings.artifacts_uri)
    champion = registry.alias_version(spec.registered_model_name, lifecycle.CHAMPION)
    challenger_metrics = flat_metrics(trained.report)
    champion_metrics = None
    if champion is not None:
        progress(f"champion v{champion} on the same holdout")
        loaded = registry.load_by_alias(spec.registered_model_name, lifecycle.CHAMPION)
        data = build_datasets(settings, latest, progress)  # the challenger's, from the cache
        champion_metrics = flat_metrics(holdout_report(loaded.booster, data, latest, settings))
    report = trained.report
    evidence = {"judged_on": f"{report['holdout_start']} .. {report['holdout_end']}",
                "n_holdout": report["n_holdout"],
                "train_days": latest.split.train_days, "data_fingerprint": trained.fingerprint}
    decision = registry.decide(spec.registered_model_name, spec.gate_rules(), trained.version,
                                challenger_metrics, champion, champion_metrics, lower_is_better,
                                evidence)
    return RetrainResult(trained, champion, challenger_metrics, champion_metrics, decision)
