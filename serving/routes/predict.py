"""POST /v1/predict and GET /v1/users/{user_id}/bundle: thin handlers over PredictionService.

msgspec validates, orjson encodes; the predict endpoint is raw ASGI (see PredictEndpoint).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from feastflow.privacy import hash_user_id
from serving.logs import new_request_id, request_id
from serving.routes.common import (
    API_KEY_HEADER,
    AppState,
    error_response,
    json_response,
    key_denied,
    require_key,
    state,
    too_large,
)
from serving.schemas import PredictRequest, RequestError, decode

log = logging.getLogger(__name__)


class PredictEndpoint:
    """POST /v1/predict as a raw ASGI app: rank apps for the unlock.

    The hot path skips every framework layer it does not need (Starlette's request/response
    objects and middleware cost more than scoring here); it still tags the request id, limits
    the body, validates with field-level 422s and never answers a valid request with a 5xx.
    """

    def __init__(self, starlette_app: Any) -> None:
        self.starlette_app = starlette_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read, validate, predict, answer."""
        app: AppState = self.starlette_app.state.core
        sent_id, key = None, None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                sent_id = value.decode("latin-1")
            elif name == API_KEY_HEADER.encode():
                key = value.decode("latin-1")
        rid = new_request_id(sent_id)
        token = request_id.set(rid)
        try:
            status, payload = await self._answer(app, scope, receive, key, rid)
        except Exception:  # never echo an unexpected error; it is logged with the request id
            log.exception("unhandled error on /v1/predict")
            status, payload = 500, b'{"detail":"internal error"}'
        finally:
            request_id.reset(token)
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload)),
            (b"x-request-id", rid.encode())]})
        await send({"type": "http.response.body", "body": payload})
        app.metrics.observe_request("predict", status, time.perf_counter() - started_at(scope))

    async def _answer(self, app: AppState, scope: Scope, receive: Receive, key: str | None,
                      rid: str) -> tuple[int, bytes]:
        settings = app.settings
        if settings.predict_requires_key and (denied := key_denied(settings.api_key, key)):
            return denied[0], orjson.dumps({"detail": denied[1]})
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > settings.max_body_bytes:
                return 413, orjson.dumps({"detail": too_large(settings.max_body_bytes)})
            chunks.append(chunk)
            more = message.get("more_body", False)
        try:
            body = decode(b"".join(chunks), PredictRequest)
            unix_us = body.unix_us()
        except RequestError as e:
            return 422, orjson.dumps({"detail": e.detail})
        user_hash = hash_user_id(body.user_id, settings.user_hash_secret)
        context = msgspec.structs.asdict(body.context)
        answer = await app.service.predict(user_hash, unix_us, context, body.k, rid)
        return 200, orjson.dumps({
            "apps": [{"app": a, "score": s} for a, s in zip(answer.items, answer.scores, strict=True)],
            "model_version": answer.model_version, "variant": answer.variant,
            "known_user": answer.known_user, "fallback": answer.fallback, "cached": answer.cached,
            "latency_ms": round((time.perf_counter() - started_at(scope)) * 1000, 3),
        })


def started_at(scope: Scope) -> float:
    """When the request reached the endpoint (set by the dispatcher)."""
    return scope.get("feastflow.started", time.perf_counter())


class FastPath:
    """The outermost ASGI app: POST /v1/predict straight to its endpoint, the rest to Starlette."""

    def __init__(self, starlette_app: Any, predict: PredictEndpoint, rest: ASGIApp) -> None:
        self.starlette_app = starlette_app  # tests and tools reach `.state` through it
        self.predict = predict
        self.rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one connection event."""
        if scope["type"] == "http" and scope["path"] == "/v1/predict" and scope["method"] == "POST":
            scope["feastflow.started"] = time.perf_counter()
            await self.predict(scope, receive, send)
        else:
            await self.rest(scope, receive, send)

    @property
    def state(self) -> Any:
        """The Starlette app's state."""
        return self.starlette_app.state


async def bundle(request: Request) -> Response:
    """The user's top apps for each of the next 24 hours (from `?start=`, default now), for a
    device that goes offline."""
    started = time.perf_counter()
    app = state(request)
    if app.settings.predict_requires_key and (denied := require_key(request)) is not None:
        return denied
    user_id = request.path_params["user_id"]
    try:
        k = int(request.query_params.get("k", "4"))
        if not 1 <= k <= app.settings.max_k:
            raise ValueError
    except ValueError:
        return error_response(["query", "k"], f"k must be an integer from 1 to {app.settings.max_k}")
    if not 1 <= len(user_id) <= 128:
        return error_response(["path", "user_id"], "user_id must have 1 to 128 characters")
    now = datetime.now(UTC)
    start = now
    if "start" in request.query_params:
        try:
            start = datetime.fromisoformat(request.query_params["start"])
            start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
            if not 1970 <= start.year <= 9998:  # the 24 hours must stay representable
                raise ValueError
        except (ValueError, OverflowError):
            return error_response(["query", "start"],
                                  "start must be an ISO 8601 time between 1970 and 9998")
    start_us = int(start.replace(minute=0, second=0, microsecond=0).timestamp()) * 1_000_000
    user_hash = hash_user_id(user_id, app.settings.user_hash_secret)
    answer, hours = await app.service.bundle(user_hash, start_us, k)
    app.metrics.observe_request("bundle", 200, time.perf_counter() - started)
    return json_response({
        "generated_at": now.isoformat(),
        "hours": [{"starts_at": datetime.fromtimestamp(start_us / 1e6 + h * 3600, UTC).isoformat(),
                   "apps": apps} for h, apps in enumerate(hours)],
        "model_version": answer.model_version, "known_user": answer.known_user,
        "fallback": answer.fallback, "precomputed": answer.cached,
    })
