"""Stage 3 of the retrieval shape: re-ranking the scored list before it is answered, one
implementation for evaluation and serving (model.yaml `retrieval.rerank`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """|a & b| / |a | b| (0 for two empty sets)."""
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def mmr_order(scores: np.ndarray, attributes: Sequence[frozenset[str]], weight: float,
              depth: int, k: int) -> np.ndarray:
    """Positions of the items in answer order: the first k picked by maximal marginal relevance
    among the `depth` best scores, then every other item by score.

    Each pick maximises (1 - weight) * relevance - weight * (largest Jaccard similarity of its
    attributes to an item already picked), relevance being the score scaled to [0, 1] over the
    `depth` best. weight 0 is the score order.
    """
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    if weight <= 0 or len(order) < 2:
        return order
    pool = list(order[:depth])
    top = np.asarray(scores, dtype=float)[pool]
    spread = top.max() - top.min()
    relevance = {p: (s - top.min()) / spread if spread > 0 else 1.0 for p, s in zip(pool, top,
                                                                                    strict=True)}
    picked: list[int] = []
    redundancy = dict.fromkeys(pool, 0.0)
    while pool and len(picked) < k:
        best = max(pool, key=lambda p: (1 - weight) * relevance[p] - weight * redundancy[p])
        pool.remove(best)
        picked.append(best)
        for p in pool:
            redundancy[p] = max(redundancy[p], jaccard(attributes[p], attributes[best]))
    chosen = set(picked)
    return np.array(picked + [p for p in order if p not in chosen], dtype=np.int64)
