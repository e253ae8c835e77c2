"""Stage 1 of the retrieval shape: the declared candidate generators, as of each entity's
cut-off, and their union (model.yaml `retrieval.generators`).

- popularity: ratings by anyone in the `window_days` before the cut-off;
- covisitation: items rated by the same person within `window_hours` of one another (each
  rating paired with its next `neighbours` ratings), counted over pairs completed strictly before
  the cut-off, summed over the entity's `recent_items` last rated items;
- embedding: the items nearest the entity's iALS factor in the ANN index (inner product);
- ease: EASE^R scores of the entity's history.

Generators never give an item the entity rated. The union interleaves them: every generator's
first item, then every second one, ... until `max_candidates`; each candidate keeps its rank and
score in each generator (NaN where a generator did not give it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from feastflow.ann import AnnIndex
from feastflow.retrieval_serving import interleave
from feastflow.spec import RetrievalSpec
from pipelines.interactions import ITEM, TS, USER, ItemIndex
from pipelines.recommenders import FactorModel, Stage, fit_ease, popularity_scores, top_items

MICROS_PER_HOUR = 3_600_000_000
ROW = "fold_row"  # the candidate's row in its fold's stage (which entity)


@dataclass(frozen=True)
class CovisitationPairs:
    """Item pairs rated by one person close in time, grouped by first item and sorted by time."""

    starts: np.ndarray  # offsets per item code into partner / ts (len = items + 1)
    partner: np.ndarray  # the other item's code
    ts: np.ndarray  # when the pair was complete: the later of the two ratings

    def scores(self, seeds: np.ndarray, cutoff: int, n_items: int) -> np.ndarray:
        """How often each item was paired with the seeds before the cut-off (summed)."""
        found = []
        for seed in seeds:
            lo, hi = self.starts[seed], self.starts[seed + 1]
            found.append(self.partner[lo:lo + np.searchsorted(self.ts[lo:hi], cutoff, "left")])
        partners = np.concatenate(found) if found else np.empty(0, dtype=np.int64)
        return np.bincount(partners, minlength=n_items).astype(np.float32)


def covisitation_pairs(events: pd.DataFrame, index: ItemIndex, window_hours: float,
                       neighbours: int = 20) -> CovisitationPairs:
    """Pairs (a, b) and (b, a) of each rating with the next `neighbours` ratings of the same
    person within `window_hours` after it."""
    ordered = events.sort_values([USER, TS, ITEM], kind="stable", ignore_index=True)
    users = ordered[USER].to_numpy()
    codes = index.codes(ordered[ITEM])
    ts = ordered[TS].to_numpy()
    window = int(window_hours * MICROS_PER_HOUR)
    firsts, seconds, times = [], [], []
    for step in range(1, min(neighbours, len(ordered) - 1) + 1):
        a, b = slice(0, len(ordered) - step), slice(step, len(ordered))
        keep = (users[a] == users[b]) & (ts[b] - ts[a] <= window) & (codes[a] >= 0) & (codes[b] >= 0)
        firsts += [codes[a][keep], codes[b][keep]]
        seconds += [codes[b][keep], codes[a][keep]]
        times += [ts[b][keep], ts[b][keep]]
    first, second, when = (np.concatenate(x) for x in (firsts, seconds, times))
    order = np.lexsort((when, first))
    starts = np.searchsorted(first[order], np.arange(len(index) + 1), "left")
    return CovisitationPairs(starts, second[order], when[order])


def _recent_items(stage: Stage, train: pd.DataFrame, rows: np.ndarray, n: int) -> list[np.ndarray]:
    """Each row's last n rated items (codes), most recent first."""
    ordered = train.sort_values([USER, TS, ITEM], kind="stable")
    recent = {user: items.to_numpy()[::-1][:n] for user, items in ordered.groupby(USER)[ITEM]}
    out = []
    for row in rows:
        items = recent.get(stage.users[row])
        out.append(stage.index.codes(items) if items is not None else np.empty(0, np.int64))
    return [codes[codes >= 0] for codes in out]


@dataclass
class GeneratorInputs:
    """What the generators read for a fold: the training events, the fitted factors, the index."""

    train: pd.DataFrame  # the fold's training events (each entity's history)
    factors: FactorModel
    ann: AnnIndex
    pairs: CovisitationPairs


def generator_lists(name: str, kind: str, n: int, params: dict[str, Any], stage: Stage,
                    rows: np.ndarray, inputs: GeneratorInputs) -> tuple[np.ndarray, np.ndarray]:
    """One generator's n items (codes) and scores per row, best first; -1 pads a short list."""
    history = stage.history[rows]
    n_items = len(stage.index)
    if kind == "popularity":
        scores = popularity_scores(stage, float(params.get("window_days", 365)), rows)
    elif kind == "covisitation":
        seeds = _recent_items(stage, inputs.train, rows, int(params.get("recent_items", 30)))
        scores = np.vstack([inputs.pairs.scores(s, int(stage.cutoffs[row]), n_items)
                            for s, row in zip(seeds, rows, strict=True)])
    elif kind == "ease":
        model = fit_ease(stage.history, float(params.get("lambda", 500)),
                         int(params.get("min_item_ratings", 3)))
        scores = model.scores(history)
    elif kind == "embedding":
        return _ann_lists(inputs.factors.user_factors[rows], inputs.ann, history, n)
    else:
        raise ValueError(f"generator {name!r}: unknown kind {kind!r}")
    columns = top_items(scores, history, n)
    picked = np.take_along_axis(scores, np.maximum(columns, 0), axis=1)
    columns = np.where((columns >= 0) & (picked > 0), columns, -1)  # nothing to say: no item
    return columns, picked


def _ann_lists(queries: np.ndarray, ann: AnnIndex, history: sp.csr_matrix, n: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """The n nearest unrated items of each query (asks the index for n + rated)."""
    columns = np.full((len(queries), n), -1, dtype=np.int64)
    scores = np.full((len(queries), n), np.nan, dtype=np.float32)
    for i, query in enumerate(queries):
        rated = set(history[i].indices.tolist())
        found, found_scores = ann.search(query, n + len(rated))
        keep = [j for j, item in enumerate(found[0]) if item >= 0 and item not in rated][:n]
        columns[i, :len(keep)] = found[0][keep]
        scores[i, :len(keep)] = found_scores[0][keep]
    return columns, scores


def union_candidates(lists: dict[str, tuple[np.ndarray, np.ndarray]], rows: np.ndarray,
                     max_candidates: int) -> pd.DataFrame:
    """The interleaved union (see the module docstring): one row per (fold row, item code) with
    `rank_in_<generator>` and `score_in_<generator>`."""
    names = list(lists)
    records: list[tuple[int, int]] = []
    for i, row in enumerate(rows):  # the server interleaves one user's lists the same way
        union = interleave([lists[name][0][i] for name in names], max_candidates)
        records += [(int(row), item) for item in union]
    frame = pd.DataFrame(records, columns=[ROW, "item_code"])
    position = {int(row): i for i, row in enumerate(rows)}
    at = frame[ROW].map(position).to_numpy()
    for name in names:
        columns, scores = lists[name]
        rank_of = {}
        for i in range(len(rows)):
            for rank, item in enumerate(columns[i]):
                if item >= 0:
                    rank_of[(i, int(item))] = (rank + 1, float(scores[i, rank]))
        found = [rank_of.get((int(a), int(item))) for a, item in zip(at, frame["item_code"],
                                                                      strict=True)]
        frame[f"rank_in_{name}"] = [f[0] if f else np.nan for f in found]
        frame[f"score_in_{name}"] = [f[1] if f else np.nan for f in found]
    return frame


def stage_one(shape: RetrievalSpec, stage: Stage, rows: np.ndarray, inputs: GeneratorInputs
              ) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Every declared generator's lists for these rows, and their union with ranks and scores."""
    lists = {name: generator_lists(name, g.kind, g.n, g.params, stage, rows, inputs)
             for name, g in shape.generators.items()}
    return union_candidates(lists, rows, shape.max_candidates), lists
