"""Recommenders of the retrieval shape's baselines (and its stage-1 generators): TopPop as of
each entity's cut-off, ItemKNN (cosine), EASE^R (closed form) and iALS (the `implicit` library).

Each returns a dense score matrix (entities x items); `top_items` masks what the entity rated and
keeps the best n. Global models fit on every entity's training events (the matrix the protocol
builds); popularity reads only events strictly before each entity's own cut-off.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.interactions import ITEM, TS, ItemIndex

MICROS_PER_DAY = 86_400_000_000


@dataclass(frozen=True)
class Stage:
    """What a split gives the recommenders: the items, each entity's training events as a matrix
    (rows in `users` order), the entities' cut-offs and the whole log (for point-in-time counts)."""

    index: ItemIndex
    users: np.ndarray
    history: sp.csr_matrix  # users x items, 1 where the entity rated the item before its cut-off
    cutoffs: np.ndarray  # Unix microseconds, per row of `history`
    events: pd.DataFrame  # the whole log, sorted by ts


def popularity_scores(stage: Stage, window_days: float, rows: np.ndarray | None = None
                      ) -> np.ndarray:
    """Ratings of each item by anyone in [cut-off - window, cut-off), per entity row."""
    rows = np.arange(len(stage.users)) if rows is None else rows
    ts = stage.events[TS].to_numpy()
    items = stage.index.codes(stage.events[ITEM])
    window = int(window_days * MICROS_PER_DAY)
    out = np.zeros((len(rows), len(stage.index)), dtype=np.float32)
    for i, row in enumerate(rows):
        cutoff = stage.cutoffs[row]
        lo, hi = np.searchsorted(ts, [cutoff - window, cutoff], side="left")
        codes = items[lo:hi]
        out[i] = np.bincount(codes[codes >= 0], minlength=len(stage.index))
    return out


def _support(matrix: sp.csr_matrix, min_item_ratings: int) -> np.ndarray:
    """Columns of the items rated at least `min_item_ratings` times (what item models span)."""
    return np.flatnonzero(np.asarray(matrix.sum(axis=0)).ravel() >= min_item_ratings)


@dataclass
class ItemModel:
    """An item-to-item weight matrix over the supported items: scores = history @ weights."""

    columns: np.ndarray
    weights: np.ndarray
    n_items: int

    def scores(self, history: sp.csr_matrix) -> np.ndarray:
        """Each history row's score of every item (unsupported items score -inf)."""
        out = np.full((history.shape[0], self.n_items), -np.inf, dtype=np.float32)
        out[:, self.columns] = np.asarray(history[:, self.columns] @ self.weights, dtype=np.float32)
        return out


def gram(matrix: sp.csr_matrix, min_item_ratings: int) -> tuple[np.ndarray, np.ndarray]:
    """The supported columns and their co-occurrence matrix X^T X (float64, dense)."""
    columns = _support(matrix, min_item_ratings)
    x = matrix[:, columns].astype(np.float64)
    return columns, np.asarray((x.T @ x).todense())


def fit_ease(matrix: sp.csr_matrix, lam: float, min_item_ratings: int = 3,
             gram_of: tuple[np.ndarray, np.ndarray] | None = None) -> ItemModel:
    """EASE^R (Steck 2019): B = I - P diag(1 / diag P), P = (X^T X + lambda I)^-1, diag B = 0."""
    columns, g = gram_of if gram_of is not None else gram(matrix, min_item_ratings)
    p = np.linalg.inv(g + lam * np.eye(len(columns)))
    weights = -p / np.diag(p)
    np.fill_diagonal(weights, 0.0)
    return ItemModel(columns, weights.astype(np.float32), matrix.shape[1])


def fit_item_knn(matrix: sp.csr_matrix, neighbours: int, shrink: float = 0.0,
                 min_item_ratings: int = 3, gram_of: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> ItemModel:
    """ItemKNN: cosine similarity of item columns, each item keeping its `neighbours` most
    similar items (self excluded)."""
    columns, g = gram_of if gram_of is not None else gram(matrix, min_item_ratings)
    norms = np.sqrt(np.diag(g))
    similarity = g / (np.outer(norms, norms) + shrink + 1e-12)
    np.fill_diagonal(similarity, 0.0)
    k = min(neighbours, len(columns) - 1)
    # keep, in each column j, the k items most similar to j: scores(i) = sum over rated j
    drop = np.argpartition(-similarity, k, axis=0)[k:]
    np.put_along_axis(similarity, drop, 0.0, axis=0)
    return ItemModel(columns, similarity.astype(np.float32), matrix.shape[1])


@dataclass
class FactorModel:
    """Entity and item factors: scores = user_factors @ item_factors^T."""

    user_factors: np.ndarray
    item_factors: np.ndarray

    def scores(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Score of every item for these rows of the fitted matrix (default: all)."""
        users = self.user_factors if rows is None else self.user_factors[rows]
        return users @ self.item_factors.T


def fit_ials(matrix: sp.csr_matrix, factors: int, regularization: float, alpha: float = 1.0,
             iterations: int = 15, seed: int = 13) -> FactorModel:
    """Implicit ALS (Hu, Koren, Volinsky 2008) with the `implicit` library: confidence
    1 + alpha per observed item, conjugate-gradient solver, on one BLAS thread."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                    iterations=iterations, random_state=seed, num_threads=2,
                                    calculate_training_loss=False)
    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        # implicit warns when OpenBLAS *could* use threads: the limit above already stops it
        warnings.filterwarnings("ignore", message="OpenBLAS is configured", category=RuntimeWarning)
        model.fit(matrix.astype(np.float32).tocsr(), show_progress=False)
    return FactorModel(np.asarray(model.user_factors, dtype=np.float32),
                       np.asarray(model.item_factors, dtype=np.float32))


def top_items(scores: np.ndarray, rated: sp.csr_matrix, n: int) -> np.ndarray:
    """Per row, the columns of the n best scores among items not rated (best first), -1 where
    fewer than n items are left (rated or unsupported: score -inf). Ties keep the lower column
    first."""
    masked = np.array(scores, dtype=np.float64, copy=True)
    masked[rated.nonzero()] = -np.inf
    n = min(n, masked.shape[1])
    part = np.argpartition(-masked, n - 1, axis=1)[:, :n]
    order = np.lexsort((part, -np.take_along_axis(masked, part, axis=1)), axis=1)
    columns = np.take_along_axis(part, order, axis=1)
    return np.where(np.isfinite(np.take_along_axis(masked, columns, axis=1)), columns, -1)


def baseline_scores(kind: str, params: dict[str, Any], stage: Stage, rows: np.ndarray,
                    gram_cache: dict[int, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """One baseline's scores for these rows of the stage, with these parameters."""
    history = stage.history
    if kind == "top_popular":
        return popularity_scores(stage, float(params.get("window_days", 365)), rows)
    if kind in ("ease", "item_knn"):
        support = int(params.get("min_item_ratings", 3))
        if support not in gram_cache:
            gram_cache[support] = gram(history, support)
        fit: Callable[..., ItemModel] = fit_ease if kind == "ease" else fit_item_knn
        options = ({"lam": float(params["lambda"])} if kind == "ease" else
                   {"neighbours": int(params["neighbours"]),
                    "shrink": float(params.get("shrink", 0.0))})
        return fit(history, min_item_ratings=support, gram_of=gram_cache[support],
                   **options).scores(history[rows])
    if kind == "ials":
        model = fit_ials(history, int(params["factors"]), float(params["regularization"]),
                         float(params.get("alpha", 1.0)), int(params.get("iterations", 15)))
        return model.scores(rows)
    raise ValueError(f"unknown recommender kind {kind!r}")
