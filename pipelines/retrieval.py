"""Evaluate a use case of the retrieval-then-rank shape (model.yaml `retrieval:`): the protocol's
validation and test folds, the declared baselines tuned on validation, and the report.

Run by `feastflow evaluate` for such a use case: every model is fitted in the same run, on the
same folds, and judged on the same entities.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feastflow.event_log import read_events
from feastflow.settings import Settings
from feastflow.spec import ModelSpec, RetrievalSpec
from pipelines.features import reference_table_path
from pipelines.interactions import (
    TS,
    ItemIndex,
    UserSplit,
    as_events,
    temporal_user_split,
    user_item_matrix,
)
from pipelines.metrics import recommendation_metrics
from pipelines.recommenders import Stage, baseline_scores, top_items

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Catalogue:
    """The items that can be recommended, their titles and attribute sets (diversity)."""

    index: ItemIndex
    titles: dict[Any, str]
    attributes: dict[Any, frozenset[str]]


def load_catalogue(settings: Settings, spec: ModelSpec) -> Catalogue:
    """The spec's catalogue reference table (every item in it, in file order)."""
    shape = retrieval_of(spec)
    catalog = shape.catalog
    table = pd.read_csv(reference_table_path(settings, spec, catalog.table))
    missing = {catalog.key, catalog.title, catalog.attribute} - set(table.columns)
    if missing:
        raise KeyError(f"catalogue table {catalog.table!r} has no column(s) {sorted(missing)}")
    keys = table[catalog.key].to_numpy()
    attributes = table[catalog.attribute].fillna("").astype(str).str.split(catalog.separator,
                                                                           regex=False)
    return Catalogue(ItemIndex(keys), dict(zip(keys.tolist(), table[catalog.title], strict=True)),
                     {k: frozenset(v) - {""} for k, v in zip(keys.tolist(), attributes,
                                                              strict=True)})


def retrieval_of(spec: ModelSpec) -> RetrievalSpec:
    """The spec's retrieval shape (a clear error for a use case without one)."""
    if spec.retrieval is None:
        raise ValueError(f"use case {spec.name} declares no `retrieval:` shape")
    return spec.retrieval


def load_events(settings: Settings, spec: ModelSpec) -> pd.DataFrame:
    """The use case's event log as (user, item, rating, ts)."""
    log, shape = spec.event_log, retrieval_of(spec)
    raw = read_events(settings.events_dir(spec.name),
                      [f'"{c}"' for c in (log.entity, spec.item_column, shape.rating, log.timestamp)])
    return as_events(raw, log.entity, spec.item_column, shape.rating, log.timestamp)


@dataclass(frozen=True)
class Fold:
    """One fold of the protocol (validation or test): its split, matrices and relevant items."""

    name: str
    split: UserSplit
    stage: Stage
    relevant: dict[Any, set[Any]]
    rows: np.ndarray  # the rows of stage.users that are evaluated (they have relevant items)


def make_fold(name: str, split: UserSplit, events: pd.DataFrame, index: ItemIndex,
              relevant_min: float) -> Fold:
    """A fold from a split: every entity of the split, its history matrix and cut-off."""
    users = split.cutoffs.index.to_numpy()
    stage = Stage(index, users, user_item_matrix(split.train, users, index),
                  split.cutoffs.to_numpy(), events.sort_values(TS, kind="stable",
                                                               ignore_index=True))
    relevant = split.relevant(relevant_min)
    return Fold(name, split, stage, relevant, np.flatnonzero(np.isin(users, list(relevant))))


def protocol_folds(events: pd.DataFrame, shape: RetrievalSpec, index: ItemIndex
                   ) -> tuple[Fold, Fold]:
    """The validation fold (carved from each entity's training events) and the test fold."""
    test = temporal_user_split(events, shape.test_fraction)
    validation = temporal_user_split(test.train, shape.test_fraction)
    return (make_fold("validation", validation, events, index, shape.relevant_min),
            make_fold("test", test, events, index, shape.relevant_min))


def earlier_folds(validation: Fold, shape: RetrievalSpec, events: pd.DataFrame, n: int
                  ) -> list[Fold]:
    """The validation fold and n - 1 folds before it, each carved by the same rule from the
    training events of the one after it (the ranker's learning folds)."""
    folds = [validation]
    for i in range(1, n):
        split = temporal_user_split(folds[-1].split.train, shape.test_fraction)
        folds.append(make_fold(f"validation-{i}", split, events, validation.stage.index,
                               shape.relevant_min))
    return folds


def ranked_lists(fold: Fold, columns: np.ndarray) -> dict[Any, list[Any]]:
    """Entity -> its ranked items, from per-row item columns (rows = fold.rows)."""
    items = fold.stage.index.items
    return {fold.stage.users[row]: items[columns[i][columns[i] >= 0]].tolist()
            for i, row in enumerate(fold.rows)}


def fold_metrics(fold: Fold, lists: dict[Any, list[Any]], shape: RetrievalSpec,
                 catalogue: Catalogue) -> dict[str, float]:
    """The shape's metrics of ranked lists on a fold."""
    return recommendation_metrics(lists, fold.relevant, shape.k, shape.retrieval_k,
                                  catalogue.attributes, len(catalogue.index))


def _grid(params: dict[str, Any], grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(grid)
    return [{**params, **dict(zip(names, values, strict=True))}
            for values in itertools.product(*(grid[n] for n in names))] or [dict(params)]


def run_baselines(shape: RetrievalSpec, validation: Fold, test: Fold, catalogue: Catalogue,
                  progress: Progress = print
                  ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]],
                             dict[str, dict[Any, list[Any]]]]:
    """Each declared baseline tuned on validation (the primary metric), refitted on the test
    fold's training events: its test metrics, chosen parameters and test lists."""
    primary = f"ndcg@{shape.k}"
    metrics, chosen, lists = {}, {}, {}
    for name, baseline in shape.baselines.items():
        grams: dict[int, Any] = {}
        best: tuple[float, dict[str, Any]] | None = None
        for params in _grid(baseline.params, baseline.grid):
            started = time.perf_counter()
            scores = baseline_scores(baseline.kind, params, validation.stage, validation.rows, grams)
            found = fold_metrics(validation, ranked_lists(validation, top_items(
                scores, validation.stage.history[validation.rows], shape.retrieval_k)), shape,
                catalogue)
            progress(f"{name} {params}: validation {primary} {found[primary]:.4f} "
                     f"({time.perf_counter() - started:.1f} s)")
            if best is None or found[primary] > best[0]:
                best = (found[primary], params)
        assert best is not None  # _grid yields at least one setting
        grams = {}
        scores = baseline_scores(baseline.kind, best[1], test.stage, test.rows, grams)
        lists[name] = ranked_lists(test, top_items(scores, test.stage.history[test.rows],
                                                   shape.retrieval_k))
        metrics[name] = fold_metrics(test, lists[name], shape, catalogue)
        chosen[name] = {"params": best[1], f"validation_{primary}": best[0]}
        progress(f"{name}: test {primary} {metrics[name][primary]:.4f} with {best[1]}")
    return metrics, chosen, lists


def write_predictions_csv(lists: pd.DataFrame, path: Path) -> None:
    """The ranked lists as CSV (entity, rank, item, score), written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    lists.to_csv(tmp, index=False, float_format="%.8g")
    tmp.replace(path)


@dataclass
class FoldCandidates:
    """A fold's stage-1 output and stage-2 rows (with features), and what built them."""

    fold: Fold
    rows: pd.DataFrame
    lists: dict[str, tuple[np.ndarray, np.ndarray]]
    factors: Any
    ann: Any


def fold_candidates(settings: Settings, spec: ModelSpec, fold: Fold, events: pd.DataFrame,
                    pairs: Any, progress: Progress) -> FoldCandidates:
    """Fit the fold's embeddings and index, run the generators, join the Feast features."""
    from feastflow.ann import build_index
    from feastflow.store import open_store
    from pipelines.generators import GeneratorInputs, stage_one
    from pipelines.ranker import candidate_frame, with_features
    from pipelines.recommenders import fit_ials

    shape = retrieval_of(spec)
    emb = shape.embedding
    started = time.perf_counter()
    factors = fit_ials(fold.stage.history, emb.factors, emb.regularization, emb.alpha,
                       emb.iterations, emb.seed)
    ann = build_index(factors.item_factors, emb.index)
    union, lists = stage_one(shape, fold.stage, fold.rows,
                             GeneratorInputs(fold.split.train, factors, ann, pairs))
    progress(f"{fold.name}: {len(union):,} candidates for {len(fold.rows)} users "
             f"({time.perf_counter() - started:.1f} s)")
    frame = candidate_frame(spec, fold.stage, union, factors, fold.relevant)
    started = time.perf_counter()
    rows = with_features(open_store(settings, spec.name), spec, frame)
    progress(f"{fold.name}: point-in-time join of {len(rows):,} rows "
             f"({time.perf_counter() - started:.1f} s)")
    return FoldCandidates(fold, rows, lists, factors, ann)


def stage_one_metrics(found: FoldCandidates, shape: RetrievalSpec) -> dict[str, float]:
    """Recall of the union's first retrieval_k (interleaved order) and of all of it, and each
    generator's recall@retrieval_k, over the evaluated entities."""
    fold, k = found.fold, shape.retrieval_k
    items = fold.stage.index.items
    users = fold.stage.users
    union = found.rows.groupby("request_id", sort=False)["item_code"].agg(list)
    out = {}
    for name, subset in ((f"union_recall@{k}", k), (f"union_recall@{shape.max_candidates}", None)):
        out[name] = float(np.mean([
            len(fold.relevant[users[row]] & set(items[np.asarray(codes[:subset], dtype=np.int64)]
                                                 .tolist())) / len(fold.relevant[users[row]])
            for row, codes in union.items()]))
    for name, (columns, _) in found.lists.items():
        out[f"{name}_recall@{k}"] = float(np.mean([
            len(fold.relevant[users[row]] & set(items[columns[i][columns[i] >= 0][:k]].tolist()))
            / len(fold.relevant[users[row]]) for i, row in enumerate(fold.rows)]))
    return out


def reranked_lists(rows: pd.DataFrame, scores: np.ndarray, fold: Fold, shape: RetrievalSpec,
                   catalogue: Catalogue, mmr_weight: float
                   ) -> tuple[dict[Any, list[Any]], dict[Any, list[float]]]:
    """Each entity's top retrieval_k after stage 3 (MMR over the attributes), with scores."""
    from feastflow.rerank import mmr_order

    items = fold.stage.index.items
    lists, list_scores = {}, {}
    frame = pd.DataFrame({"row": rows["request_id"].to_numpy(), "code": rows["item_code"].to_numpy(),
                          "score": scores})
    for row, group in frame.groupby("row", sort=False):
        codes, values = group["code"].to_numpy(), group["score"].to_numpy()
        attributes = [catalogue.attributes.get(item, frozenset()) for item in items[codes].tolist()]
        order = mmr_order(values, attributes, mmr_weight, shape.rerank.mmr_depth, shape.k)
        order = order[: shape.retrieval_k]
        user = fold.stage.users[row]
        lists[user] = items[codes[order]].tolist()
        list_scores[user] = values[order].tolist()
    return lists, list_scores


def ann_figures(found: FoldCandidates, shape: RetrievalSpec) -> dict[str, float]:
    """The index's recall@retrieval_k against exact search over the fold's users, and its
    single-query latency (median and p99, ms, one thread)."""
    from feastflow.ann import recall_against_exact

    queries = found.factors.user_factors[found.fold.rows]
    vectors = found.factors.item_factors
    latencies = []
    for query in queries:
        started = time.perf_counter()
        found.ann.search(query, shape.retrieval_k)
        latencies.append((time.perf_counter() - started) * 1000)
    return {"library": shape.embedding.index.library, **shape.embedding.index.params,
            f"recall@{shape.retrieval_k}_vs_exact": recall_against_exact(
                found.ann, vectors, queries, shape.retrieval_k),
            "latency_ms_p50": float(np.percentile(latencies, 50)),
            "latency_ms_p99": float(np.percentile(latencies, 99)),
            "items": len(vectors), "dim": int(vectors.shape[1])}


@dataclass
class RetrievalRun:
    """What one run of the protocol produced: the report, the model's test lists, the ranker."""

    report: dict[str, Any]
    predictions: pd.DataFrame
    booster: Any
    features: list[str]


def evaluate_retrieval(settings: Settings, spec: ModelSpec, progress: Progress = print
                       ) -> tuple[dict[str, Any], pd.DataFrame]:
    """The whole protocol in one run: baselines tuned on validation, the ranker trained on the
    validation folds, everything judged on the test fold. The report and the model's lists."""
    run = run_retrieval(settings, spec, progress)
    return run.report, run.predictions


def run_retrieval(settings: Settings, spec: ModelSpec, progress: Progress = print
                  ) -> RetrievalRun:
    """`evaluate_retrieval`, keeping the fitted ranker."""
    from feastflow.store import open_store
    from pipelines.datasets import model_feature_names
    from pipelines.generators import covisitation_pairs
    from pipelines.ranker import fit_ranker
    from pipelines.training import score

    shape = retrieval_of(spec)
    events = load_events(settings, spec)
    catalogue = load_catalogue(settings, spec)
    validation, test = protocol_folds(events, shape, catalogue.index)
    progress(f"{len(events):,} events; validation {len(validation.rows)} users, test "
             f"{len(test.rows)} users with relevant items")
    baselines, tuned, _ = run_baselines(shape, validation, test, catalogue, progress)
    covisitation = next((g for g in shape.generators.values() if g.kind == "covisitation"), None)
    params = covisitation.params if covisitation is not None else {}
    pairs = covisitation_pairs(events, catalogue.index, float(params.get("window_hours", 24)),
                               int(params.get("neighbours", 20)))
    learn = [fold_candidates(settings, spec, fold, events, pairs, progress)
             for fold in earlier_folds(validation, shape, events, shape.ranker_folds)]
    judge = fold_candidates(settings, spec, test, events, pairs, progress)
    features = model_feature_names(open_store(settings, spec.name), spec)
    learn_rows = pd.concat([found.rows.assign(request_id=found.rows["request_id"] + i * len(
        events)) for i, found in enumerate(learn)], ignore_index=True)
    booster = fit_ranker(learn_rows, features, spec)
    scores = score(booster, judge.rows, spec.model.categorical)["score"].to_numpy()
    lists, list_scores = reranked_lists(judge.rows, scores, test, shape, catalogue,
                                        shape.rerank.mmr_weight)
    plain, _ = reranked_lists(judge.rows, scores, test, shape, catalogue, 0.0)
    model = fold_metrics(test, lists, shape, catalogue)
    primary = f"ndcg@{shape.k}"
    report = {
        "use_case": spec.name, "task": spec.task, "primary_metric": primary,
        "model": model, "baselines": baselines, "n_users": len(test.rows),
        "model_without_rerank": fold_metrics(test, plain, shape, catalogue),
        "rerank": {"mmr_weight": shape.rerank.mmr_weight, "mmr_depth": shape.rerank.mmr_depth},
        "stage_one": stage_one_metrics(judge, shape),
        "ann": ann_figures(judge, shape),
        "tuned_on_validation": tuned,
        "n_validation_users": len(validation.rows),
        "n_ranker_rows": len(learn_rows), "n_features": len(features),
    }
    best = max(baselines, key=lambda n: baselines[n][primary]) if baselines else None
    if best is not None:
        report["vs_best_baseline"] = {"baseline": best,
                                      "ratio": model[primary] / baselines[best][primary]}
    rows = [(user, rank, item, s) for user, items in lists.items()
            for rank, (item, s) in enumerate(zip(items, list_scores[user], strict=True), start=1)]
    predictions = pd.DataFrame(rows, columns=[spec.event_log.entity, "rank", spec.item_column,
                                              "score"])
    return RetrievalRun(report, predictions, booster, features)


def serving_artifacts(settings: Settings, spec: ModelSpec) -> Any:
    """What the server answers from, fitted on every entity's events: the iALS factors and the
    declared ANN index over the item factors, the co-visitation counts and EASE^R weights of the
    declared generators, the catalogue's titles and attributes (`feastflow.retrieval_serving`)."""
    from feastflow.embeddings import Embeddings
    from feastflow.retrieval_serving import Covisitation, ItemWeights, RetrievalArtifacts
    from pipelines.generators import covisitation_pairs
    from pipelines.interactions import USER
    from pipelines.recommenders import fit_ease, fit_ials

    shape = retrieval_of(spec)
    emb = shape.embedding
    events = load_events(settings, spec)
    catalogue = load_catalogue(settings, spec)
    users = np.sort(events[USER].unique())
    history = user_item_matrix(events, users, catalogue.index)
    factors = fit_ials(history, emb.factors, emb.regularization, emb.alpha, emb.iterations,
                       emb.seed)
    embeddings = Embeddings.build(users, catalogue.index.items, factors.user_factors,
                                  factors.item_factors, emb.index)
    kinds = {g.kind: g.params for g in shape.generators.values()}
    params = kinds.get("covisitation", {})
    pairs = covisitation_pairs(events, catalogue.index, float(params.get("window_hours", 24)),
                               int(params.get("neighbours", 20)))
    first = np.repeat(np.arange(len(catalogue.index)), np.diff(pairs.starts))
    keys, counts = np.unique(first * len(catalogue.index) + pairs.partner, return_counts=True)
    covisitation = Covisitation(
        np.searchsorted(keys // len(catalogue.index), np.arange(len(catalogue.index) + 1)),
        keys % len(catalogue.index), counts.astype(np.float32))
    ease = None
    if "ease" in kinds:
        model = fit_ease(history, float(kinds["ease"].get("lambda", 500)),
                         int(kinds["ease"].get("min_item_ratings", 3)))
        ease = ItemWeights(model.columns, model.weights, len(catalogue.index))
    items = catalogue.index.items.tolist()
    return RetrievalArtifacts(embeddings, covisitation, ease,
                              [str(catalogue.titles[i]) for i in items],
                              [catalogue.attributes.get(i, frozenset()) for i in items])


def train_retrieval(settings: Settings, spec: ModelSpec, progress: Progress = print) -> Any:
    """Run the protocol, then log one MLflow run: the ranker as the model, the serving
    embeddings and ANN index as its `retrieval/` artifacts (sha256 of each file tagged on the
    version), every metric; register the version as challenger."""
    import tempfile

    import feast
    import lightgbm as lgb
    import mlflow

    from feastflow.embeddings import ARTIFACT_DIR
    from pipelines.training import TrainResult, _metric_key, flat_metrics, model_signature
    from registry import lifecycle

    run = run_retrieval(settings, spec, progress)
    artifacts = serving_artifacts(settings, spec)
    embeddings = artifacts.embeddings
    metrics = flat_metrics(run.report)
    registry = lifecycle.Registry(settings.tracking_uri, settings.artifacts_uri, create=True)
    tags = {"feature_service.ranking": str(spec.features.ranking_service), "task": spec.task,
            "shape": "retrieval", "primary_metric": run.report["primary_metric"],
            "lib.lightgbm": lgb.__version__, "lib.feast": feast.__version__,
            "ann.library": embeddings.index_spec.library}
    with tempfile.TemporaryDirectory() as tmp, registry.run(spec.name, f"{spec.name}-retrieval") \
            as active:
        mlflow.set_tags(tags)
        mlflow.log_metrics({lifecycle.mlflow_name(_metric_key(k)): v for k, v in metrics.items()})
        folder = Path(tmp) / ARTIFACT_DIR
        folder.mkdir()
        artifacts.save(folder)
        mlflow.log_artifacts(str(folder), ARTIFACT_DIR)
        (Path(tmp) / "report.json").write_text(json.dumps(run.report, indent=1))
        mlflow.log_artifact(str(Path(tmp) / "report.json"))
        model_uri = registry.log_lightgbm(
            active.info.run_id, run.booster, spec.model.categorical,
            model_signature(run.features, spec.model.categorical), None,
            [f"lightgbm=={lgb.__version__}"])
        tags.update(lifecycle.artifact_tags(folder, ARTIFACT_DIR))
        run_id = active.info.run_id
    registered = registry.register_challenger(spec.registered_model_name, model_uri, run_id,
                                              metrics, tags)
    progress(f"registered {spec.name} v{registered.version} as challenger")
    return TrainResult(registered.version, run_id, run.report, "", run.report["n_users"],
                       run.report["n_ranker_rows"])

