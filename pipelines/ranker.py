"""Stage 2 of the retrieval shape: the candidates' point-in-time features from the use case's
Feast ranking service, and the LightGBM lambdarank ranker over them.

The ranker learns on the validation fold (labels: validation items rated relevant) and ranks the
test fold: what it learned from is never what it is judged on.
"""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from feast import FeatureStore

from feastflow.ranking import EVENT_TIMESTAMP, LABEL, REQUEST_ID, as_of, frame_columns
from feastflow.spec import ModelSpec
from pipelines.generators import ROW
from pipelines.recommenders import FactorModel, Stage

EMBEDDING_SIMILARITY = "embedding_similarity"


def candidate_frame(spec: ModelSpec, stage: Stage, candidates: pd.DataFrame,
                    factors: FactorModel, relevant: dict[Any, set[Any]]) -> pd.DataFrame:
    """The stage-2 entity frame: each candidate's keys, request fields and generator columns, the
    user-movie embedding similarity, its cut-off (as of 1 us before) and its 0/1 label."""
    rows = candidates[ROW].to_numpy()
    codes = candidates["item_code"].to_numpy()
    users = stage.users[rows]
    items = stage.index.items[codes]
    log = spec.event_log
    expanded = {
        log.entity: users, spec.item_column: items,
        log.timestamp: pd.to_datetime(stage.cutoffs[rows], unit="us", utc=True),
        **{c: candidates[c].to_numpy() for c in candidates.columns if c.startswith(("rank_in_",
                                                                                     "score_in_"))},
        EMBEDDING_SIMILARITY: np.einsum("ij,ij->i", factors.user_factors[rows],
                                        factors.item_factors[codes]),
    }
    frame = pd.DataFrame({REQUEST_ID: rows, **frame_columns(expanded, spec)})
    frame[EVENT_TIMESTAMP] = as_of(pd.Series(expanded[log.timestamp])).to_numpy()
    frame[LABEL] = [int(item in relevant.get(user, ())) for user, item in zip(users, items,
                                                                               strict=True)]
    frame["item_code"] = codes
    return frame


def with_features(store: FeatureStore, spec: ModelSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The frame joined point in time with the ranking service (rows kept in order)."""
    frame = frame.assign(_order=np.arange(len(frame)))
    joined = store.get_historical_features(
        entity_df=frame, features=store.get_feature_service(spec.features.ranking_service)).to_df()
    if len(joined) != len(frame):
        raise ValueError(f"the point-in-time join returned {len(joined)} rows for {len(frame)}")
    return joined.sort_values("_order", ignore_index=True).drop(columns="_order")


def fit_ranker(rows: pd.DataFrame, features: list[str], spec: ModelSpec) -> lgb.Booster:
    """LightGBM lambdarank over the requests that have a relevant candidate."""
    from pipelines.training import fit_model

    return fit_model(rows.sort_values(REQUEST_ID, kind="stable"), features, spec)
