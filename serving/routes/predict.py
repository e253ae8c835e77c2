"""POST /v1/predict: the apps a user is likely to open after this unlock."""

from __future__ import annotations

import time

from fastapi import APIRouter

from feastflow.privacy import hash_user_id
from serving.deps import PredictorDep, SettingsDep
from serving.schemas import PredictRequest, PredictResponse, ScoredApp

router = APIRouter(prefix="/v1", tags=["predict"])


@router.post("/predict", response_model=PredictResponse)
def predict(body: PredictRequest, predictor: PredictorDep, settings: SettingsDep
            ) -> PredictResponse:
    """Rank apps for the unlock; sync on purpose: Feast's client blocks, so it runs in a thread."""
    started = time.perf_counter()
    user_hash = hash_user_id(body.user_id, settings.user_hash_secret)
    result = predictor.predict(user_hash, body.timestamp, body.context.model_dump(), body.k)
    return PredictResponse(
        apps=[ScoredApp(app=app, score=score) for app, score in result.items],
        model_version=predictor.model.version,
        known_user=result.known_user,
        fallback=result.fallback,
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
    )
