"""Stage 3 of the retrieval shape: re-ranking the scored list before it is answered, one
implementation for evaluation and serving (model.yaml `retrieval.rerank`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
    pool = order[:depth].tolist()
    top = np.asarray(scores, dtype=float)[pool]
    low, spread = float(top.min()), float(top.max() - top.min())
    relevance = {p: (s - low) / spread if spread > 0 else 1.0
                 for p, s in zip(pool, top.tolist(), strict=True)}
    # each pool item's attributes as bits: |a & b| / |a | b| by popcount, the same quotient
    bit: dict[str, int] = {}
    masks = {p: sum(1 << bit.setdefault(a, len(bit)) for a in attributes[p]) for p in pool}
    picked: list[int] = []
    redundancy = dict.fromkeys(pool, 0.0)
    while pool and len(picked) < k:
        best = max(pool, key=lambda p: (1 - weight) * relevance[p] - weight * redundancy[p])
        pool.remove(best)
        picked.append(best)
        chosen_mask = masks[best]
        for p in pool:
            union = (masks[p] | chosen_mask).bit_count()
            similarity = (masks[p] & chosen_mask).bit_count() / union if union else 0.0
            if similarity > redundancy[p]:
                redundancy[p] = similarity
    chosen = set(picked)
    return np.array(picked + [p for p in order.tolist() if p not in chosen], dtype=np.int64)
