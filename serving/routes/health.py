"""GET /healthz: the process is alive and says whether a model is loaded."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(request: Request) -> dict[str, object]:
    """Alive; `model_version` is null while no model is loaded."""
    predictor = getattr(request.app.state, "predictor", None)
    return {"status": "ok", "model_version": predictor.model.version if predictor else None}
