"""Scoring one request: online features through Feast, candidates, the ranker, top k.

Training calls the same `feastflow.ranking` functions on the same Feast feature services, so
the rows scored here are built exactly like the rows the model learned from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from feast import FeatureStore

from feastflow.ranking import REQUEST_ID, candidate_rows, entity_rows, model_matrix, top_k
from feastflow.spec import ModelSpec
from registry.lifecycle import LoadedModel

TIMESTAMP_SUFFIX = "__ts"


@dataclass(frozen=True)
class Prediction:
    """The ranked items, whether the user was known, and which fallback (if any) answered."""

    items: list[tuple[str, float]]
    known_user: bool
    fallback: str | None


class Predictor:
    """Holds the model, the spec and the feature store; scores requests."""

    def __init__(self, store: FeatureStore, spec: ModelSpec, model: LoadedModel) -> None:
        self.store = store
        self.spec = spec
        self.model = model
        self.entity_service = store.get_feature_service(spec.features.entity_service)
        self.ranking_service = store.get_feature_service(spec.features.ranking_service)
        # feature name -> TTL seconds: Feast's online read does not enforce TTL, we do.
        self.ttl_seconds: dict[str, float] = {}
        for view in store.list_feature_views():
            if view.ttl and view.ttl.total_seconds() > 0:
                for feature in view.features:
                    self.ttl_seconds[feature.name] = view.ttl.total_seconds()

    def _online(self, service: Any, rows: pd.DataFrame, now_unix: float) -> pd.DataFrame:
        entity_rows_ = rows.to_dict("records")
        response = self.store.get_online_features(features=service, entity_rows=entity_rows_)
        values = response.to_dict(include_event_timestamps=True)
        frame = pd.DataFrame({k: v for k, v in values.items() if not k.endswith(TIMESTAMP_SUFFIX)})
        for name, ttl in self.ttl_seconds.items():
            stamps = values.get(name + TIMESTAMP_SUFFIX)
            if stamps is None or name not in frame:
                continue
            stale = now_unix - np.asarray(stamps, dtype="float64") > ttl
            if stale.any():
                frame[name] = frame[name].astype(object).where(~stale, None)
        return frame

    def _enrich(self, user_hash: str, timestamp: datetime, context: dict[str, Any]
                ) -> pd.DataFrame:
        """The request as a one-row frame with its stage-1 (per-entity) features."""
        log = self.spec.event_log
        request = pd.DataFrame([{
            REQUEST_ID: 0, log.entity: user_hash,
            log.timestamp: pd.Timestamp(timestamp).tz_convert("UTC"), **context,
        }])
        stage1_keys = entity_rows(request, self.spec).drop(columns=[REQUEST_ID, "event_timestamp"])
        stage1 = self._online(self.entity_service, stage1_keys, timestamp.timestamp())
        return pd.concat([request, stage1.drop(columns=stage1_keys.columns)], axis=1)

    def predict(self, user_hash: str, timestamp: datetime, context: dict[str, Any], k: int
                ) -> Prediction:
        """Rank candidate items for one request; unknown users get what is popular at the hour."""
        enriched = self._enrich(user_hash, timestamp, context)
        fallback_list = self.spec.candidates.fallback_list
        own_lists = [n for n in self.spec.candidates.lists if n != fallback_list]
        if not any(_non_empty(enriched.at[0, n]) for n in own_lists):
            popular = enriched.at[0, fallback_list]
            items = list(popular)[:k] if _non_empty(popular) else []
            scored = [(item, 1.0 / (rank + 1)) for rank, item in enumerate(items)]
            return Prediction(scored, known_user=False, fallback="popular_at_hour")
        return self._rank(enriched, k, timestamp.timestamp())

    def warm_up(self, timestamp: datetime) -> None:
        """Score one synthetic request so the first real one does not pay Feast's cold caches."""
        enriched = self._enrich("warm-up", timestamp, self.spec.event_log.example_context)
        for name in self.spec.candidates.lists:
            enriched[name] = [["warm-up"]]
        self._rank(enriched, 1, timestamp.timestamp())

    def _rank(self, enriched: pd.DataFrame, k: int, now_unix: float) -> Prediction:
        log = self.spec.event_log
        candidates = candidate_rows(enriched, self.spec)
        stage2_keys = candidates[list(self.spec.features.join_keys)
                                 + list(self.spec.features.request_fields)]
        stage2 = self._online(self.ranking_service, stage2_keys, now_unix)
        features = pd.concat(
            [candidates, stage2.drop(columns=[c for c in stage2 if c in candidates])], axis=1
        )
        matrix = model_matrix(features, self.model.booster.feature_name(),
                              self.spec.model.categorical)
        scores = self.model.booster.predict(matrix, num_threads=1)
        items = candidates[log.item].tolist()
        return Prediction(top_k(items, scores, k), known_user=True, fallback=None)


def _non_empty(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and len(
        value) > 0
