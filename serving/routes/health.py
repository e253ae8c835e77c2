"""GET /healthz (alive), /readyz (ready or degraded, with reasons), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from serving.routes.common import json_response, state


async def healthz(request: Request) -> Response:
    """Alive; `model_version` is null while no model is loaded."""
    champion = state(request).holder.get("champion")
    return json_response({"status": "ok", "model_version": champion.version if champion else None})


async def readyz(request: Request) -> Response:
    """200 `ready`, 200 `degraded` (answering from fallbacks, reasons listed) or 503 (no model)."""
    app = state(request)
    reasons = []
    champion = app.holder.get("champion")
    if champion is None:
        reasons.append(app.startup_error or "no champion model loaded: train and promote first")
    elif champion.source == "disk":
        reasons.append(f"registry unreachable at start: serving v{champion.version} from disk")
    if app.holder.registry_error:
        reasons.append(f"registry: {app.holder.registry_error}")
    if not await app.service.features.ping():
        reasons.append("online store unreachable: answering from fallbacks")
    if app.intake is None and app.spec is not None and app.spec.realtime is not None:
        reasons.append("event intake unavailable: POST /v1/events answers 503")
    elif app.intake is not None and not await asyncio.to_thread(app.intake.stream.ping):
        reasons.append("event stream unreachable: POST /v1/events answers 503")
    breaker = app.service.features.breaker
    if breaker.state:
        reasons.append(f"online store circuit {breaker.state.name.lower()}: {breaker.last_error}")
    models = {v: m.version for v, m in app.holder.models.items()}
    if champion is None:
        return json_response({"status": "not_ready", "reasons": reasons, "models": models}, 503)
    status = "degraded" if reasons else "ready"
    return json_response({"status": status, "reasons": reasons, "models": models})


async def metrics(request: Request) -> Response:
    """Prometheus exposition of the server's metrics."""
    body, content_type = state(request).metrics.render()
    return Response(body, media_type=content_type)
