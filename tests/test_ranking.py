"""The shared ranking contract: candidates, time keys, frames; the serving predictor."""

from __future__ import annotations

import gc
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from feastflow.ranking import (
    REQUEST_ID,
    as_of,
    candidate_rows,
    entity_rows,
    generate_candidates,
    model_matrix,
    time_values,
    top_k,
)
from feastflow.scoring import RowPredictor
from feastflow.settings import FEATURE_REPO
from feastflow.spec import load_spec

SPEC = load_spec("next_app", FEATURE_REPO)


def test_candidates_union_lists_in_priority_order_with_ranks() -> None:
    items, ranks = generate_candidates(
        [["b", "a"], ["a", "c", "d", "e"], None, ["z", "b"]], [5, 3, 2, 2], max_candidates=4
    )
    assert items == ["b", "a", "c", "d"]  # "e" is past its list's limit, "z" past the maximum
    assert ranks[0, 0] == 1 and ranks[1, 0] == 2 and np.isnan(ranks[2, 0])
    assert ranks[1, 1] == 1 and ranks[2, 1] == 2 and ranks[3, 1] == 3
    assert np.isnan(ranks[:, 2]).all()
    assert ranks[0, 3] == 2 and np.isnan(ranks[1, 3])


def test_time_keys_are_utc_hour_weekday_and_unix_seconds() -> None:
    ts = pd.Series(pd.to_datetime(["2026-01-10T23:30:00.9Z", "2026-01-12T00:00:00.0Z"]))
    assert time_values(ts, "hour_of_day").tolist() == [23, 0]
    assert time_values(ts, "is_weekend").tolist() == [1, 0]  # Saturday, Monday
    assert time_values(ts, "unix_seconds").tolist() == [1768087800, 1768176000]


def test_features_are_looked_up_just_before_the_unlock() -> None:
    ts = pd.Series(pd.to_datetime(["2026-01-10T08:00:00Z"]))
    assert as_of(ts).iloc[0] == pd.Timestamp("2026-01-10T07:59:59.999999Z")


def requests_frame() -> pd.DataFrame:
    return pd.DataFrame({
        REQUEST_ID: [0, 1],
        "user_id": ["u1", "u2"],
        "timestamp": pd.to_datetime(["2026-01-10T08:00:00Z", "2026-01-10T21:00:00Z"]),
        "location": ["home", "work"], "battery": [50, 10], "charging": [False, True],
        "network": ["wifi", "cellular"], "secs_since_prev_unlock": [60.0, None],
        "app": ["mail", "maps"],
        "last_app": ["calendar", None],
        "recent_apps": [["calendar", "mail"], None],
        "top_apps_28d": [["mail", "news"], None],
        "popular_apps_at_hour": [["news", "maps"], ["maps"]],
    })


def test_stage1_rows_carry_the_declared_keys() -> None:
    rows = entity_rows(requests_frame(), SPEC)
    assert list(rows.columns) == [REQUEST_ID, "user_id", "hour_of_day", "event_timestamp"]
    assert rows["hour_of_day"].tolist() == [8, 21]


def test_candidate_rows_have_join_keys_request_fields_and_ranks() -> None:
    rows = candidate_rows(requests_frame(), SPEC)
    first = rows[rows[REQUEST_ID] == 0]
    assert first["app"].tolist() == ["calendar", "mail", "news", "maps"]
    assert set(first["prev_app"]) == {"calendar"}
    second = rows[rows[REQUEST_ID] == 1]
    assert second["app"].tolist() == ["maps"] and second["prev_app"].tolist() == [""]
    assert rows.loc[rows["app"] == "mail", "rank_in_recent_apps"].tolist() == [2]
    assert rows["request_ts_unix"].tolist()[0] == 1768032000
    for column in [*SPEC.features.join_keys, *SPEC.features.request_fields,
                   *SPEC.model.extra_features]:
        assert column in rows.columns


def test_model_matrix_orders_columns_and_types_categories() -> None:
    rows = candidate_rows(requests_frame(), SPEC)
    matrix = model_matrix(rows, ["battery", "app", "missing_feature"], ["app"])
    assert list(matrix.columns) == ["battery", "app", "missing_feature"]
    assert str(matrix["app"].dtype) == "category"
    assert matrix["missing_feature"].isna().all()


def test_top_k_breaks_ties_by_candidate_order() -> None:
    assert top_k(["a", "b", "c"], np.array([0.5, 0.9, 0.5]), 2) == [("b", 0.9), ("a", 0.5)]


@pytest.fixture(scope="module")
def small_booster() -> lgb.Booster:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 6))
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values take the trees' default branches
    y = (np.nan_to_num(x[:, 0]) + rng.normal(size=400) > 0).astype(int)
    return lgb.train({"objective": "binary", "num_leaves": 7, "verbosity": -1, "seed": 1},
                     lgb.Dataset(x, y), num_boost_round=30)


def test_the_row_predictor_scores_exactly_as_booster_predict(small_booster: lgb.Booster) -> None:
    rng = np.random.default_rng(4)
    predictor = RowPredictor(small_booster)
    for rows in (1, 7, 22, 130):
        x = rng.normal(size=(rows, 6))
        x[rng.random(x.shape) < 0.2] = np.nan
        np.testing.assert_array_equal(predictor.predict(x),
                                      small_booster.predict(x, num_threads=1))
    fortran = np.asfortranarray(rng.normal(size=(5, 6)))
    np.testing.assert_array_equal(predictor.predict(fortran), small_booster.predict(fortran))


def test_the_row_predictor_leaves_no_garbage_cycles_where_booster_predict_does(
        small_booster: lgb.Booster) -> None:
    x = np.random.default_rng(5).normal(size=(22, 6))

    def cyclic_garbage(predict: Any) -> int:
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(50):
                predict(x)
            gc.collect()
            return len(gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()

    assert cyclic_garbage(lambda m: small_booster.predict(m, num_threads=1)) > 50
    assert cyclic_garbage(RowPredictor(small_booster).predict) == 0
