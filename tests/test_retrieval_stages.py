"""Stage 1 (generators and their union), the ANN index against exact search and stage 3 (MMR),
on tiny hand-made data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feastflow.ann import ExactIndex, build_index, recall_against_exact
from feastflow.rerank import mmr_order
from feastflow.spec import AnnIndexSpec
from pipelines.generators import covisitation_pairs, union_candidates
from pipelines.interactions import ITEM, RATING, TS, USER, ItemIndex

HOUR = 3_600_000_000


def test_covisitation_counts_only_pairs_complete_before_the_cutoff() -> None:
    # person 1 rates 10 then 20 an hour later; person 2 rates 10 then 30 two days later (outside
    # a 24 h window); person 3 rates 10 then 20 at hour 100
    events = pd.DataFrame([(1, 10, 5.0, 0), (1, 20, 5.0, HOUR), (2, 10, 5.0, 0),
                           (2, 30, 5.0, 48 * HOUR), (3, 10, 4.0, 99 * HOUR),
                           (3, 20, 4.0, 100 * HOUR)], columns=[USER, ITEM, RATING, TS])
    index = ItemIndex(np.array([10, 20, 30]))
    pairs = covisitation_pairs(events, index, window_hours=24)
    seeds = index.codes(np.array([10]))
    assert pairs.scores(seeds, cutoff=HOUR, n_items=3).tolist() == [0, 0, 0]  # at, not before
    assert pairs.scores(seeds, cutoff=HOUR + 1, n_items=3).tolist() == [0, 1, 0]
    assert pairs.scores(seeds, cutoff=200 * HOUR, n_items=3).tolist() == [0, 2, 0]
    # pairs go both ways
    assert pairs.scores(index.codes(np.array([20])), 200 * HOUR, 3).tolist() == [2, 0, 0]


def test_union_interleaves_generators_and_keeps_each_rank() -> None:
    lists = {"a": (np.array([[1, 2, 3]]), np.array([[9.0, 8.0, 7.0]])),
             "b": (np.array([[4, 1, -1]]), np.array([[0.5, 0.4, np.nan]]))}
    union = union_candidates(lists, np.array([7]), max_candidates=3)
    assert union["item_code"].tolist() == [1, 4, 2]  # a1, b1, (a2 = 2), b2 = 1 already in
    assert union["fold_row"].tolist() == [7, 7, 7]
    assert union["rank_in_b"].tolist()[:2] == [2, 1]
    assert np.isnan(union["rank_in_b"].iloc[2])
    assert union["score_in_a"].iloc[0] == 9.0 and np.isnan(union["score_in_a"].iloc[1])


@pytest.mark.parametrize("library", ["hnswlib", "usearch", "faiss"])
def test_ann_index_finds_what_exact_search_finds(library: str) -> None:
    # hnswlib is the declared (pinned) library; the others were measured against it (bench/ann.py)
    pytest.importorskip(library)
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    index = build_index(vectors, AnnIndexSpec(library=library, params={"ef_search": 200}))
    assert recall_against_exact(index, vectors, queries, 10) >= 0.95
    rows, scores = index.search(queries[0], 5)
    assert np.allclose(scores[0], vectors[rows[0]] @ queries[0], atol=1e-4)  # inner products


def test_exact_index_orders_by_inner_product() -> None:
    rows, scores = ExactIndex(np.array([[1.0, 0], [0, 1.0], [2.0, 0]])).search(np.array([1.0, 0]), 2)
    assert rows[0].tolist() == [2, 0] and scores[0].tolist() == [2.0, 1.0]


def test_mmr_with_weight_zero_is_the_score_order() -> None:
    genres = [frozenset({"a"})] * 4
    assert mmr_order(np.array([0.1, 0.9, 0.5, 0.7]), genres, 0.0, 10, 3).tolist() == [1, 3, 2, 0]


def test_mmr_promotes_a_different_genre_over_a_close_score() -> None:
    genres = [frozenset({"Comedy"}), frozenset({"Comedy"}), frozenset({"Drama"})]
    scores = np.array([1.0, 0.95, 0.9])
    assert mmr_order(scores, genres, 0.0, 10, 3).tolist() == [0, 1, 2]
    assert mmr_order(scores, genres, 0.5, 10, 3).tolist() == [0, 2, 1]
    # only the first k are picked by MMR; the rest follow by score
    assert mmr_order(scores, genres, 0.5, 10, 1).tolist() == [0, 1, 2]


def test_serving_ranks_each_candidate_in_each_generators_list() -> None:
    from feastflow.retrieval_scoring import _generator_columns
    from feastflow.retrieval_serving import Generated

    lists = {"a": Generated(np.array([5, 2, 9]), np.array([0.75, 0.5, 0.25], dtype=np.float32)),
             "b": Generated(np.array([2]), np.array([3.0], dtype=np.float32))}
    columns = _generator_columns(lists, np.array([2, 5, 7]), n_items=10)  # 9: not a candidate
    np.testing.assert_array_equal(columns["rank_in_a"], [2.0, 1.0, np.nan])
    np.testing.assert_array_equal(columns["score_in_a"], [0.5, 0.75, np.nan])
    np.testing.assert_array_equal(columns["rank_in_b"], [1.0, np.nan, np.nan])
    np.testing.assert_array_equal(columns["score_in_b"], [3.0, np.nan, np.nan])
