"""GET /healthz (alive), /readyz (ready or degraded, with reasons, per use case), /metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from serving.routes.common import ServerState, UseCaseState, json_response, state


async def healthz(request: Request) -> Response:
    """Alive; `model_version` (the default use case's champion) is null while none is loaded."""
    holder = state(request).holder
    champion = holder.get("champion") if holder is not None else None
    return json_response({"status": "ok", "model_version": champion.version if champion else None})


async def use_case_readiness(uc: UseCaseState) -> dict[str, Any]:
    """One use case's `status` (ready, degraded, not_ready), `reasons` and loaded `models`."""
    if uc.holder is None or uc.service is None:
        return {"status": "not_ready", "reasons": [uc.unavailable or "not set up"], "models": {}}
    reasons = []
    champion = uc.holder.get("champion")
    if uc.unavailable is not None:
        reasons.append(f"not served (503): {uc.unavailable}")
    elif champion is None:
        reasons.append(uc.startup_error or "no champion model loaded: train and promote first")
    elif champion.source == "disk":
        reasons.append(f"registry unreachable at start: serving v{champion.version} from disk")
    if uc.holder.registry_error:
        reasons.append(f"registry: {uc.holder.registry_error}")
    if uc.holder.model_error:  # a model copy failed its checksum: refused (details in the log)
        reasons.append(uc.holder.model_error)
    if not await uc.service.features.ping():
        reasons.append("online store unreachable: answering from fallbacks")
    events = f"POST /v1/{uc.name}/events"
    if uc.intake is None and uc.spec is not None and uc.spec.realtime is not None:
        reasons.append(f"event intake unavailable: {events} answers 503")
    elif uc.intake is not None and not await asyncio.to_thread(uc.intake.stream.ping):
        reasons.append(f"event stream unreachable: {events} answers 503")
    breaker = uc.service.features.breaker
    if breaker.state:
        reasons.append(f"online store circuit {breaker.state.name.lower()}: {breaker.last_error}")
    models = {v: m.version for v, m in uc.holder.models.items()}
    if champion is None or uc.unavailable is not None:
        status = "not_ready"
    else:
        status = "degraded" if reasons else "ready"
    return {"status": status, "reasons": reasons, "models": models}


async def readyz(request: Request) -> Response:
    """200 `ready`, 200 `degraded` (answering from fallbacks, reasons listed) or 503 `not_ready`,
    with each use case's own status under `use_cases`.

    The top level is the default use case's readiness (its `reasons` and `models`), degraded
    when another use case with a champion is degraded (its reasons prefixed by its name). A use
    case without a champion is listed as not_ready under `use_cases` and does not make the
    server degraded: it is not deployed yet. 503 when the default use case (or, without one,
    every use case) has no champion.
    """
    app: ServerState = state(request)
    per_case = {name: await use_case_readiness(uc) for name, uc in app.use_cases.items()}
    default = per_case.get(app.default)
    if default is not None:
        status, reasons, models = default["status"], list(default["reasons"]), default["models"]
    else:
        status, reasons, models = "not_ready", [f"default use case {app.default!r} not served"], {}
    others = [(n, r) for n, r in per_case.items() if n != app.default]
    for name, readiness in others:
        if readiness["status"] == "degraded":
            reasons += [f"{name}: {reason}" for reason in readiness["reasons"]]
    others_serve = any(r["status"] != "not_ready" for _, r in others)
    others_degraded = any(r["status"] == "degraded" for _, r in others)
    if (default is None and others_serve) or (status == "ready" and others_degraded):
        status = "degraded"
    body = {"status": status, "reasons": reasons, "models": models, "use_cases": per_case}
    return json_response(body, 503 if status == "not_ready" else 200)


async def metrics(request: Request) -> Response:
    """Prometheus exposition of the server's metrics (every use case's, labelled)."""
    body, content_type = state(request).metrics.render()
    return Response(body, media_type=content_type)
