"""POST /v1/events (API key required): a batch of raw events into the event stream."""

from __future__ import annotations

import asyncio
import time

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from feastflow.stream import StreamUnavailable
from serving.routes.common import (
    CLIENT_CLOSED,
    error_response,
    json_response,
    require_key,
    state,
    use_case_of,
)


async def post_events(request: Request) -> Response:
    """202 with the counts accepted and already known, plus each rejected event's field and reason.

    Valid events are accepted even when others in the batch are not; 422 when none is valid or
    the batch holds more than `max_events_per_request`; 413 (from the body-size middleware) over
    `max_events_body_bytes`, which a full batch of each contract's largest valid events fits;
    503 when the stream cannot take them (nothing was accepted: retry the whole batch).
    """
    started = time.perf_counter()
    try:
        response = await _post_events(request)
    except ClientDisconnect:  # gone mid-body: counted apart, nobody to answer
        response = Response(status_code=CLIENT_CLOSED)
    app = state(request)
    uc = app.get(request.path_params.get("use_case"))
    metrics = uc.metrics if uc is not None else app.unknown_metrics
    if metrics is not None:
        metrics.observe_request("events", response.status_code, time.perf_counter() - started)
    return response


async def _post_events(request: Request) -> Response:
    if (denied := require_key(request)) is not None:
        return denied
    app = state(request)
    uc, refused = use_case_of(request)
    if refused is not None:
        return refused
    assert uc is not None
    if uc.intake is None:
        reason = ("it has no real-time features" if uc.spec is not None and uc.spec.realtime is None
                  else "see /readyz")
        return json_response({"detail": f"event intake of {uc.name!r} is not available: "
                                        f"{reason}"}, 503)
    try:
        payload = orjson.loads(await request.body())
    except orjson.JSONDecodeError as e:
        return error_response(["body"], f"invalid JSON: {e}")
    events = payload.get("events") if isinstance(payload, dict) else None
    if not isinstance(events, list) or not events:
        return error_response(["body", "events"], "required: a non-empty list of event objects")
    limit = app.settings.max_events_per_request
    if len(events) > limit:
        return error_response(["body", "events"], f"at most {limit} events per request, got "
                                                  f"{len(events)}: send smaller batches")
    if uc.stream_processor is not None:
        uc.stream_processor.ensure_started()
    try:
        result = await asyncio.to_thread(uc.intake.submit, events)
    except StreamUnavailable:
        uc.metrics.error("event_stream")
        # Nothing was appended: the stream's append carries a deadline Redis enforces (see
        # RedisEventStream); a retry is safe either way, event ids are deduplicated.
        response = json_response(
            {"detail": "the event stream is unavailable; nothing was accepted: retry the whole "
                       "batch later (events already seen are reported as duplicates)"}, 503)
        response.headers["retry-after"] = "1"
        return response
    uc.metrics.count_events(result.accepted, result.duplicates, len(result.rejected))
    if not result.accepted and not result.duplicates:
        return json_response({"detail": result.rejected}, 422)
    return json_response(result.body(), 202)
