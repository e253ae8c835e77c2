"""GET /healthz (alive), /readyz (ready or degraded, with reasons, per use case), /metrics.

/readyz stays unauthenticated: orchestrators and load balancers probe it without a key, and it
gives away nothing but short reason codes (the text behind each goes to the log) and the loaded
model versions (which /healthz and every prediction name anyway). It answers within
FEASTFLOW_READINESS_BUDGET_SECONDS even with Redis hung: each probe has that budget, and a
probe still running from an earlier call is awaited rather than started again, so polling a
hung Redis does not pile up threads or connections.

Reason codes (per use case; another use case's are prefixed `<use case>:` at the top level):
`model_spec_invalid`, `feature_store_unusable`, `no_champion`, `model_from_disk`,
`registry_unreachable`, `model_not_warm`, `online_store_unreachable`,
`online_store_circuit_open`, `online_store_circuit_half_open`, `event_intake_unavailable`,
`event_stream_unreachable`; top level only: `default_use_case_not_served`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from serving.events import EventIntake
from serving.routes.common import ServerState, UseCaseState, json_response, state

log = logging.getLogger(__name__)
STREAM_STATUS_BUDGET_S = 1.0  # /metrics and /readyz do not wait on a hung broker beyond this


async def healthz(request: Request) -> Response:
    """Alive; `model_version` (the default use case's champion) is null while none is loaded."""
    holder = state(request).holder
    champion = holder.get("champion") if holder is not None else None
    return json_response({"status": "ok", "model_version": champion.version if champion else None})


async def probe(uc: UseCaseState, name: str, check: Callable[[], Awaitable[bool]],
                budget_s: float) -> bool:
    """Whether `check` answers True within `budget_s`. A check still running from an earlier
    call (a hung Redis) is awaited again, never started twice."""
    task = uc.probes.get(name)
    if task is None or task.done():
        task = uc.probes[name] = asyncio.ensure_future(_quiet(check))
    try:
        return await asyncio.wait_for(asyncio.shield(task), budget_s)
    except TimeoutError:
        return False


async def _quiet(check: Callable[[], Awaitable[bool]]) -> bool:
    try:
        return bool(await check())
    except Exception:  # a probe that fails is a dependency that is not there
        log.debug("readiness probe failed", exc_info=True)
        return False


async def readiness_details(uc: UseCaseState, budget_s: float
                            ) -> tuple[str, dict[str, str], dict[str, str]]:
    """One use case's status (ready, degraded, not_ready), its reasons as {code: text for the
    log}, and its loaded models."""
    if uc.holder is None or uc.service is None:
        return "not_ready", {"model_spec_invalid": uc.unavailable or "not set up"}, {}
    reasons: dict[str, str] = {}
    service = uc.service
    intake = uc.intake
    checks: dict[str, Awaitable[bool]] = {
        "online_store": probe(uc, "online_store", service.features.ping, budget_s)}
    if intake is not None:
        checks["event_stream"] = probe(
            uc, "event_stream", lambda: asyncio.to_thread(intake.stream.ping), budget_s)
    answered = dict(zip(checks, await asyncio.gather(*checks.values()), strict=True))
    champion = uc.holder.get("champion")
    if uc.unavailable is not None:
        reasons["feature_store_unusable"] = f"not served (503): {uc.unavailable}"
    elif champion is None:
        code = "feature_store_unusable" if uc.startup_error else "no_champion"
        reasons[code] = uc.startup_error or "no champion model loaded: train and promote first"
    else:
        if champion.source == "disk":
            reasons["model_from_disk"] = (f"registry unreachable at start: serving "
                                          f"v{champion.version} from disk")
        if champion.version not in service.warmed:
            reasons["model_not_warm"] = f"v{champion.version} has not scored yet (see the log)"
    if uc.holder.registry_error:
        reasons["registry_unreachable"] = f"registry: {uc.holder.registry_error}"
    if uc.holder.model_error:  # a model copy failed its checksum: refused (details in the log)
        reasons[uc.holder.model_error] = "a model copy was refused (see the log)"
    if not answered["online_store"]:
        reasons["online_store_unreachable"] = (f"online store did not answer a ping within "
                                               f"{budget_s} s: answering from fallbacks")
    events = f"POST /v1/{uc.name}/events"
    if intake is None and uc.spec is not None and uc.spec.realtime is not None:
        reasons["event_intake_unavailable"] = f"event intake unavailable: {events} answers 503"
    elif intake is not None and not answered["event_stream"]:
        reasons["event_stream_unreachable"] = (f"event stream did not answer a ping within "
                                               f"{budget_s} s: {events} answers 503")
    elif intake is not None:
        reasons.update((code, "see the event stream's log line") for code in
                       await _stream_reasons(uc, intake))
    breaker = service.features.breaker
    if breaker.state:
        reasons[f"online_store_circuit_{breaker.state.name.lower()}"] = (
            f"online store circuit {breaker.state.name.lower()}: {breaker.last_error}")
    models = {v: m.version for v, m in uc.holder.models.items()}
    if champion is None or uc.unavailable is not None:
        status = "not_ready"
    else:
        status = "degraded" if reasons else "ready"
    return status, reasons, models


async def use_case_readiness(uc: UseCaseState, budget_s: float = 1.0) -> dict[str, Any]:
    """One use case's `status`, `reasons` (codes) and loaded `models`; the text behind each
    code is logged when the set of reasons changes."""
    status, reasons, models = await readiness_details(uc, budget_s)
    if set(reasons) != uc.logged_reasons:
        uc.logged_reasons = set(reasons)
        if reasons:
            log.warning("use case %s is %s: %s", uc.name, status,
                        "; ".join(f"{code}: {text}" for code, text in reasons.items()))
        else:
            log.info("use case %s is %s", uc.name, status)
    return {"status": status, "reasons": list(reasons), "models": models}


async def _stream_reasons(uc: UseCaseState, intake: EventIntake) -> list[str]:
    # processor_stalled / dead_letters, and the dead-letter gauge refreshed on the way
    try:
        reasons, status = await asyncio.wait_for(
            asyncio.to_thread(intake.stream_reasons), STREAM_STATUS_BUDGET_S)
    except Exception as e:  # the ping above answered: a slow look is not a reason to degrade
        log.warning("use case %s: event stream status not read: %s: %s", uc.name,
                    type(e).__name__, e)
        return []
    uc.metrics.set_dead_letters(status.dead_letters)
    return reasons


async def readyz(request: Request) -> Response:
    """200 `ready`, 200 `degraded` (answering from fallbacks, reason codes listed) or 503
    `not_ready`, with each use case's own status under `use_cases`.

    The top level is the default use case's readiness (its `reasons` and `models`), degraded
    when another use case with a champion is degraded (its reasons prefixed by its name). A use
    case without a champion is listed as not_ready under `use_cases` and does not make the
    server degraded: it is not deployed yet. 503 when the default use case (or, without one,
    every use case) has no champion.
    """
    app: ServerState = state(request)
    budget_s = app.settings.readiness_budget_seconds
    names = list(app.use_cases)
    found = await asyncio.gather(*(use_case_readiness(app.use_cases[n], budget_s) for n in names))
    per_case = dict(zip(names, found, strict=True))
    default = per_case.get(app.default)
    if default is not None:
        status, reasons, models = default["status"], list(default["reasons"]), default["models"]
    else:
        status, reasons, models = "not_ready", ["default_use_case_not_served"], {}
    others = [(n, r) for n, r in per_case.items() if n != app.default]
    for name, readiness in others:
        if readiness["status"] == "degraded":
            reasons += [f"{name}:{reason}" for reason in readiness["reasons"]]
    others_serve = any(r["status"] != "not_ready" for _, r in others)
    others_degraded = any(r["status"] == "degraded" for _, r in others)
    if (default is None and others_serve) or (status == "ready" and others_degraded):
        status = "degraded"
    body = {"status": status, "reasons": reasons, "models": models, "use_cases": per_case}
    return json_response(body, 503 if status == "not_ready" else 200)


async def metrics(request: Request) -> Response:
    """Prometheus exposition of the server's metrics (every use case's, labelled)."""
    app: ServerState = state(request)
    for uc in app.use_cases.values():
        if uc.intake is not None:  # the dead-letter gauge reads the broker: at scrape time
            try:
                status = await asyncio.wait_for(asyncio.to_thread(uc.intake.stream.status),
                                                STREAM_STATUS_BUDGET_S)
                uc.metrics.set_dead_letters(status.dead_letters)
            except Exception as e:
                log.debug("use case %s: dead letters not read: %s", uc.name, e)
    body, content_type = app.metrics.render()
    return Response(body, media_type=content_type)
