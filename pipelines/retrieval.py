"""Evaluate a use case of the retrieval-then-rank shape (model.yaml `retrieval:`): the protocol's
validation and test folds, the declared baselines tuned on validation, and the report.

Run by `feastflow evaluate` for such a use case: every model is fitted in the same run, on the
same folds, and judged on the same entities.
"""

from __future__ import annotations

import itertools
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


def ranked_lists(fold: Fold, columns: np.ndarray, scores: np.ndarray | None = None
                 ) -> dict[Any, list[Any]]:
    """Entity -> its ranked items, from per-row item columns (rows = fold.rows)."""
    items = fold.stage.index.items
    return {fold.stage.users[row]: items[columns[i]].tolist() for i, row in enumerate(fold.rows)}


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


def write_lists_csv(lists: dict[Any, list[Any]], scores: dict[Any, list[float]], path: Path,
                    entity_header: str, item_header: str) -> None:
    """Every evaluated entity's ranked list as CSV (entity, rank, item, score), written whole or
    not at all."""
    rows = [(user, rank, item, score) for user, items in lists.items()
            for rank, (item, score) in enumerate(zip(items, scores[user], strict=True), start=1)]
    frame = pd.DataFrame(rows, columns=[entity_header, "rank", item_header, "score"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False, float_format="%.8g")
    tmp.replace(path)
