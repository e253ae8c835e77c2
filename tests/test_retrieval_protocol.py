"""The retrieval shape's protocol (per-user temporal split, leak checks) and its metrics, on tiny
hand-made data whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipelines.interactions import (
    ITEM,
    RATING,
    TS,
    USER,
    ItemIndex,
    held_out_count,
    temporal_user_split,
    user_item_matrix,
)
from pipelines.metrics import intra_list_diversity, recommendation_metrics, user_list_metrics
from pipelines.recommenders import Stage, fit_ease, popularity_scores, top_items

DAY = 86_400_000_000


def _events(rows: list[tuple[int, int, float, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[USER, ITEM, RATING, TS])


def test_held_out_count_is_max_one_floor_a_fifth() -> None:
    assert held_out_count(np.array([1, 4, 5, 9, 10, 35, 2698]), 0.2).tolist() == \
        [1, 1, 1, 1, 2, 7, 539]


def test_split_orders_by_time_then_item_and_sets_the_cutoff() -> None:
    # user 1 rates 10 movies; the last two by (ts, movieId) are 30@t9 and 20@t9 -> 20 before 30
    rows = [(1, m, 4.0, t) for m, t in [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 7),
                                        (8, 8), (30, 9), (20, 9)]]
    rows += [(2, 5, 5.0, 3), (2, 6, 2.0, 4), (2, 7, 4.5, 5), (2, 8, 3.0, 6), (2, 9, 1.0, 7)]
    split = temporal_user_split(_events(rows), 0.2)
    test_1 = split.test[split.test[USER] == 1]
    assert test_1[ITEM].tolist() == [20, 30]
    assert split.cutoffs[1] == 9 and split.cutoffs[2] == 7
    assert split.test[split.test[USER] == 2][ITEM].tolist() == [9]
    # nothing held out is before its user's cut-off, nothing kept is after it
    merged = split.train.merge(split.cutoffs.rename("cutoff"), left_on=USER, right_index=True)
    assert (merged[TS] <= merged["cutoff"]).all()
    assert len(split.train) + len(split.test) == len(rows)
    # user 2's only held-out rating is 1.0: not relevant, so user 2 is not evaluated
    assert split.relevant(4.0) == {1: {20, 30}}


def test_popularity_counts_only_ratings_strictly_before_each_cutoff() -> None:
    events = _events([(1, 10, 5.0, 1 * DAY), (2, 10, 5.0, 2 * DAY), (3, 11, 5.0, 2 * DAY),
                      (3, 11, 5.0, 5 * DAY), (4, 12, 4.0, 9 * DAY)])
    index = ItemIndex(np.array([10, 11, 12]))
    stage = Stage(index, np.array([7, 8]), user_item_matrix(events.head(0), np.array([7, 8]), index),
                  np.array([2 * DAY, 9 * DAY]), events.sort_values(TS, ignore_index=True))
    scores = popularity_scores(stage, window_days=1000)
    assert scores[0].tolist() == [1, 0, 0]  # at day 2: day-2 ratings are at the cut-off, not before
    assert scores[1].tolist() == [2, 2, 0]  # at day 9: the day-9 rating is excluded
    assert popularity_scores(stage, window_days=5)[1].tolist() == [0, 1, 0]  # (day 4, day 9)


def test_top_items_never_returns_a_rated_item() -> None:
    index = ItemIndex(np.array([1, 2, 3, 4]))
    history = user_item_matrix(_events([(1, 2, 5.0, 0), (1, 3, 5.0, 0)]), np.array([1]), index)
    ranked = top_items(np.array([[0.1, 0.9, 0.8, 0.2]]), history, 4)
    assert ranked[0].tolist() == [3, 0, -1, -1]  # items 4 then 1; 2 and 3 were rated


def test_ease_weights_have_a_zero_diagonal_and_follow_co_occurrence() -> None:
    # items 0 and 1 always together, item 2 alone
    events = _events([(u, i, 5.0, 0) for u in range(6) for i in (0, 1)] + [(9, 2, 5.0, 0)])
    index = ItemIndex(np.array([0, 1, 2]))
    matrix = user_item_matrix(events, np.array([*range(6), 9]), index)
    model = fit_ease(matrix, lam=1.0, min_item_ratings=1)
    assert np.allclose(np.diag(model.weights), 0.0)
    assert model.weights[0, 1] > 0.5 and abs(model.weights[0, 2]) < 1e-6


def test_user_metrics_by_hand() -> None:
    # relevant {a, b, c}; hits at ranks 1 and 3 of 10
    ranked = ["a", "x", "b", "y", "z", "q", "r", "s", "t", "u", "c"]
    m = user_list_metrics(ranked, {"a", "b", "c"}, k=10, retrieval_k=11)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / idcg)
    assert m["recall@10"] == pytest.approx(2 / 3)
    assert m["map@10"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert m["hit_rate@10"] == 1.0
    assert m["recall@11"] == 1.0


def test_ndcg_ideal_counts_at_most_k_relevant_items() -> None:
    relevant = set("abcdefghijkl")  # 12 relevant, k = 10: a perfect list scores 1
    assert user_list_metrics(list("abcdefghij"), relevant, 10, 10)["ndcg@10"] == pytest.approx(1.0)


def test_coverage_and_diversity() -> None:
    genres = {1: frozenset({"Comedy"}), 2: frozenset({"Comedy"}), 3: frozenset({"Drama"})}
    assert intra_list_diversity([1, 2], genres) == 0.0
    assert intra_list_diversity([1, 2, 3], genres) == pytest.approx(2 / 3)
    out = recommendation_metrics({"u": [1, 2], "v": [1, 3], "w": [3]}, {"u": {2}, "v": {9}},
                                 k=2, retrieval_k=2, attributes=genres, catalogue_size=10)
    assert out["coverage@2"] == pytest.approx(0.3)  # w is not evaluated: {1, 2, 3} of 10
    assert out["hit_rate@2"] == 0.5 and out["diversity@2"] == pytest.approx(0.5)


def test_a_user_without_relevant_items_is_refused() -> None:
    with pytest.raises(ValueError, match="not evaluated"):
        user_list_metrics([1], set(), 10, 100)


def _movielens_raw() -> dict:
    import yaml

    from feastflow.settings import FEATURE_REPO

    return yaml.safe_load((FEATURE_REPO / "movielens" / "model.yaml").read_text())


def test_the_spec_names_a_catalogue_that_is_not_a_reference_table() -> None:
    from feastflow.spec import ModelSpec

    raw = _movielens_raw()
    raw["retrieval"]["catalog"]["table"] = "films"
    with pytest.raises(ValueError, match=r"retrieval\.catalog\.table 'films'"):
        ModelSpec(**raw)


def test_the_spec_refuses_a_retrieval_shape_on_a_per_event_task() -> None:
    from feastflow.spec import ModelSpec

    raw = _movielens_raw()
    raw.update(task="regression", event_log={**raw["event_log"], "label": "rating"},
               features={**raw["features"], "service": "movielens_ranker_v1"})
    with pytest.raises(ValueError, match="retrieval is a ranking shape"):
        ModelSpec(**raw)


def test_the_spec_refuses_an_unknown_generator_kind_and_a_metric_of_another_shape() -> None:
    from feastflow.spec import ModelSpec

    raw = _movielens_raw()
    raw["retrieval"]["generators"]["random"] = {"kind": "random"}
    with pytest.raises(ValueError, match=r"retrieval.generators.random.kind"):
        ModelSpec(**raw)
    raw = _movielens_raw()
    raw["metrics"] = ["top4"]
    with pytest.raises(ValueError, match="metric 'top4' does not apply"):
        ModelSpec(**raw)
