"""Holdout metrics of each task, for the model and its baselines alike (pure functions).

- ranking: top-k hit rate, NDCG@k and recall@k (one relevant item per request), candidate recall;
- binary classification: ROC AUC, average precision, log loss, Brier score, precision and recall
  at the declared threshold, or of each day's `daily_budget` highest scores;
- regression: MAE, RMSE, MAPE (over labels != 0), R².
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from feastflow.ranking import LABEL, REQUEST_ID
from feastflow.spec import ModelSpec


def hit_rates(scored: pd.DataFrame, n_requests: int, ks: tuple[int, ...] = (1, 4)
              ) -> dict[str, float]:
    """top-k hit rate, NDCG@k and recall@k over all requests (a request whose answer is not a
    candidate is a miss), and candidate recall."""
    if n_requests == 0:
        raise ValueError("no holdout requests to evaluate")
    ranked = scored.sort_values([REQUEST_ID, "score"], ascending=[True, False], kind="stable")
    position = ranked.groupby(REQUEST_ID).cumcount() + 1
    hits = ranked.loc[ranked[LABEL] == 1, REQUEST_ID].to_frame().assign(
        position=position[ranked[LABEL] == 1]
    )
    first = hits.groupby(REQUEST_ID)["position"].min()
    out = {}
    for k in ks:
        found = first[first <= k]
        out[f"top{k}"] = float(len(found) / n_requests)
        # one relevant item per request: recall@k is the hit rate, NDCG@k is 1/log2(1 + rank)
        out[f"recall{k}"] = out[f"top{k}"]
        out[f"ndcg{k}"] = float((1.0 / np.log2(1.0 + found.to_numpy())).sum() / n_requests)
    out["candidate_recall"] = float(hits[REQUEST_ID].nunique() / n_requests)
    return out


def list_metrics(suggestions: list[list[str]], actual: list[str], ks: tuple[int, ...]
                 ) -> dict[str, float]:
    """The ranking metrics of fixed suggestion lists (baselines), the same as `hit_rates`."""
    out: dict[str, float] = {}
    ranks = [s.index(a) + 1 if a in s else None for s, a in zip(suggestions, actual, strict=True)]
    n = len(actual)
    for k in ks:
        found = [r for r in ranks if r is not None and r <= k]
        out[f"top{k}"] = len(found) / n
        out[f"recall{k}"] = out[f"top{k}"]
        out[f"ndcg{k}"] = float(sum(1.0 / np.log2(1.0 + r) for r in found) / n)
    return out


def classification_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5,
                           days: np.ndarray | None = None, daily_budget: int | None = None
                           ) -> dict[str, float]:
    """Binary classification metrics of scores in [0, 1] against 0/1 labels."""
    y = np.asarray(labels, dtype=float)
    p = np.clip(np.asarray(scores, dtype=float), 1e-15, 1 - 1e-15)
    if len(np.unique(y)) < 2:
        raise ValueError("the holdout holds one class only: ROC AUC is undefined; widen it")
    flagged = p >= threshold
    out = {
        "roc_auc": float(skm.roc_auc_score(y, p)),
        "average_precision": float(skm.average_precision_score(y, p)),
        "log_loss": float(skm.log_loss(y, p, labels=[0, 1])),
        "brier": float(skm.brier_score_loss(y, p)),
        "precision_at_threshold": float(y[flagged].mean()) if flagged.any() else 0.0,
        "recall_at_threshold": float(y[flagged].sum() / max(y.sum(), 1)),
    }
    if daily_budget is not None and days is not None:
        frame = pd.DataFrame({"y": y, "p": p, "day": days})
        top = frame.sort_values("p", ascending=False, kind="stable").groupby("day").head(daily_budget)
        out["precision_at_budget"] = float(top["y"].mean())
        out["recall_at_budget"] = float(top["y"].sum() / max(y.sum(), 1))
    return out


def regression_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Regression metrics of predictions against labels."""
    y = np.asarray(labels, dtype=float)
    yhat = np.asarray(predictions, dtype=float)
    error = yhat - y
    nonzero = y != 0
    return {
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt((error ** 2).mean())),
        "mape": float(np.abs(error[nonzero] / y[nonzero]).mean()) if nonzero.any() else float("nan"),
        "r2": float(skm.r2_score(y, yhat)),
    }


def event_metrics(spec: ModelSpec, labels: np.ndarray, scores: np.ndarray,
                  days: np.ndarray | None = None) -> dict[str, float]:
    """The declared metrics (and the primary one) of a per-event task."""
    if spec.task == "binary_classification":
        found = classification_metrics(labels, scores, spec.threshold, days, spec.daily_budget)
    else:
        found = regression_metrics(labels, scores)
    return {m: found[m] for m in dict.fromkeys([spec.primary, *spec.metrics])}


def user_list_metrics(ranked: list[object], relevant: set[object], k: int, retrieval_k: int
                      ) -> dict[str, float]:
    """One entity's binary-relevance metrics of its ranked list: NDCG@k (IDCG over
    min(|relevant|, k)), recall@k (hits / |relevant|), MAP@k (precision at each hit, over
    min(|relevant|, k)), hit rate@k, recall@retrieval_k."""
    if not relevant:
        raise ValueError("an entity without relevant items is not evaluated")
    top = ranked[:k]
    hits = np.array([item in relevant for item in top], dtype=float)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = discounts[: min(len(relevant), k)].sum()
    precision_at_hit = np.cumsum(hits) / np.arange(1, len(hits) + 1) * hits
    return {
        f"ndcg@{k}": float((hits * discounts[: len(hits)]).sum() / ideal),
        f"recall@{k}": float(hits.sum() / len(relevant)),
        f"map@{k}": float(precision_at_hit.sum() / min(len(relevant), k)),
        f"hit_rate@{k}": float(hits.any()),
        f"recall@{retrieval_k}": float(len(relevant.intersection(ranked[:retrieval_k]))
                                       / len(relevant)),
    }


def intra_list_diversity(items: list[object], attributes: dict[object, frozenset[str]]) -> float:
    """Mean over the list's pairs of 1 - Jaccard(attributes): 0 all alike, 1 nothing shared."""
    sets = [attributes.get(item, frozenset()) for item in items]
    distances = [1.0 - len(a & b) / len(a | b) if a | b else 0.0
                 for i, a in enumerate(sets) for b in sets[i + 1:]]
    return float(np.mean(distances)) if distances else 0.0


def recommendation_metrics(lists: dict[object, list[object]], relevant: dict[object, set[object]],
                           k: int, retrieval_k: int, attributes: dict[object, frozenset[str]],
                           catalogue_size: int) -> dict[str, float]:
    """The retrieval shape's metrics, averaged over the entities with relevant items: those of
    `user_list_metrics`, catalogue coverage@k (distinct items of all top-k lists / catalogue)
    and intra-list attribute diversity@k."""
    if not relevant:
        raise ValueError("no entity has a relevant item: nothing to evaluate")
    per_user = [user_list_metrics(lists.get(user, []), items, k, retrieval_k)
                for user, items in relevant.items()]
    out = {name: float(np.mean([m[name] for m in per_user])) for name in per_user[0]}
    shown = {item for user in relevant for item in lists.get(user, [])[:k]}
    out[f"coverage@{k}"] = len(shown) / catalogue_size
    out[f"diversity@{k}"] = float(np.mean([intra_list_diversity(lists.get(user, [])[:k], attributes)
                                           for user in relevant]))
    return out
