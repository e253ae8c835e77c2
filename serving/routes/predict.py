"""POST /v1/{use_case}/predict (/v1/predict: the default use case) and
GET /v1/users/{user_id}/bundle (the default ranking use case): thin handlers over the services.

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
    CLIENT_CLOSED,
    ServerState,
    UseCaseState,
    error_response,
    json_response,
    key_denied,
    require_key,
    state,
    too_large,
    use_case_of,
)
from serving.schemas import RequestError, decode, to_unix_us
from serving.server import BodyTimeout, read_body_within

log = logging.getLogger(__name__)


class PredictEndpoint:
    """POST /v1/{use_case}/predict (and /v1/predict, the default use case) as a raw ASGI app.

    The hot path skips every framework layer it does not need (Starlette's request/response
    objects and middleware cost more than scoring here); it still tags the request id, limits
    the body, validates with field-level 422s (the schema generated from the use case's
    contract) and never answers a valid request with a 5xx.
    """

    def __init__(self, starlette_app: Any) -> None:
        self.starlette_app = starlette_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read, validate, predict, answer."""
        app: ServerState = self.starlette_app.state.core
        name = scope.get("feastflow.use_case")
        if name is None and "path_params" in scope:  # reached through Starlette's router
            name = scope["path_params"].get("use_case")
        uc = app.get(name)
        sent_id, key = None, None
        for header, value in scope["headers"]:
            if header == b"x-request-id":
                sent_id = value.decode("latin-1")
            elif header == API_KEY_HEADER.encode():
                key = value.decode("latin-1")
        rid = new_request_id(sent_id)
        token = request_id.set(rid)
        close = False
        try:
            if uc is None:
                status, payload = 404, orjson.dumps(app.unknown(name or app.default))
            elif not uc.served:
                status, payload = 503, orjson.dumps(
                    {"detail": f"use case {uc.name!r} is not available: {uc.unavailable}"})
            else:
                status, payload = await self._answer(app, uc, scope, receive, key, rid)
        except BodyTimeout as e:  # a slow client: answered, and its connection closed
            status, payload, close = 408, orjson.dumps({"detail": str(e)}), True
        except Exception:  # never echo an unexpected error; it is logged with the request id
            log.exception("unhandled error on %s", scope["path"])
            status, payload = 500, b'{"detail":"internal error"}'
        finally:
            request_id.reset(token)
        if status != CLIENT_CLOSED:  # nobody to answer
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", b"%d" % len(payload)), (b"x-request-id", rid.encode())]
            if close:
                headers.append((b"connection", b"close"))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
        metrics = uc.metrics if uc is not None else app.unknown_metrics
        if metrics is not None:
            metrics.observe_request("predict", status, time.perf_counter() - started_at(scope))

    async def _answer(self, app: ServerState, uc: UseCaseState, scope: Scope, receive: Receive,
                      key: str | None, rid: str) -> tuple[int, bytes]:
        settings = app.settings
        if settings.predict_requires_key and (denied := key_denied(settings.api_key, key)):
            return denied[0], orjson.dumps({"detail": denied[1]})
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":  # gone mid-body: not an invalid request
                return CLIENT_CLOSED, b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > settings.max_body_bytes:
                return 413, orjson.dumps({"detail": too_large(settings.max_body_bytes)})
            chunks.append(chunk)
            more = message.get("more_body", False)
        try:
            body = decode(b"".join(chunks), uc.request_type)
            unix_us = to_unix_us(body.timestamp)
        except RequestError as e:
            return 422, orjson.dumps({"detail": e.detail})
        entity = getattr(body, uc.entity)
        if uc.hash_entity:
            entity = hash_user_id(str(entity), settings.user_hash_secret)
        context = msgspec.structs.asdict(body.context)
        service = uc.service
        assert service is not None
        task = uc.task
        if task == "ranking":
            answer = await service.predict(entity, unix_us, context, body.k, rid)
            item = uc.item_key
            titles = answer.titles
            return 200, orjson.dumps({
                uc.items_key: [{item: a, "score": s}
                               for a, s in zip(answer.items, answer.scores, strict=True)]
                if titles is None else  # a catalogue's use case answers each item's title
                [{item: a, "title": t, "score": s}
                 for a, t, s in zip(answer.items, titles, answer.scores, strict=True)],
                "model_version": answer.model_version, "variant": answer.variant,
                "known_user": answer.known_user, "fallback": answer.fallback,
                "cached": answer.cached,
                "latency_ms": round((time.perf_counter() - started_at(scope)) * 1000, 3),
            })
        answer = await service.predict(entity, unix_us, context, 1, rid)
        value = answer.scores[0] if answer.scores else None
        out: dict[str, Any] = (
            {"score": value, "decision": answer.decision} if task == "binary_classification"
            else {"prediction": value})
        out.update(model_version=answer.model_version, variant=answer.variant,
                   known=answer.known_user, fallback=answer.fallback, cached=answer.cached,
                   latency_ms=round((time.perf_counter() - started_at(scope)) * 1000, 3))
        return 200, orjson.dumps(out)


def started_at(scope: Scope) -> float:
    """When the request reached the endpoint (set by the dispatcher)."""
    return scope.get("feastflow.started", time.perf_counter())


_PREFIX, _SUFFIX = "/v1/", "/predict"


class FastPath:
    """The outermost ASGI app: POST /v1/predict and /v1/{use_case}/predict straight to their
    endpoint, the rest to Starlette."""

    def __init__(self, starlette_app: Any, predict: PredictEndpoint, rest: ASGIApp,
                 body_timeout_s: float = 10.0) -> None:
        self.starlette_app = starlette_app  # tests and tools reach `.state` through it
        self.predict = predict
        self.rest = rest
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one connection event (an HTTP body gets its read deadline here)."""
        if scope["type"] == "http":
            receive = read_body_within(receive, self.body_timeout_s)
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path == "/v1/predict":
                scope["feastflow.started"] = time.perf_counter()
                scope["feastflow.use_case"] = None
                await self.predict(scope, receive, send)
                return
            if path.startswith(_PREFIX) and path.endswith(_SUFFIX):
                name = path[4:-8]
                if name and "/" not in name:
                    scope["feastflow.started"] = time.perf_counter()
                    scope["feastflow.use_case"] = name
                    await self.predict(scope, receive, send)
                    return
        await self.rest(scope, receive, send)

    @property
    def state(self) -> Any:
        """The Starlette app's state."""
        return self.starlette_app.state


async def bundle(request: Request) -> Response:
    """The user's top items for each of the next 24 hours (from `?start=`, default now), for a
    device that goes offline. API key required, like every other route that reads a user's
    history: anyone could otherwise read a user's apps hour by hour by guessing ids."""
    started = time.perf_counter()
    app = state(request)
    if (denied := require_key(request)) is not None:
        return denied
    uc, refused = use_case_of(request)
    if refused is not None:
        return refused
    assert uc is not None and uc.service is not None
    if uc.task != "ranking":
        return json_response({"detail": f"use case {uc.name!r} is a {uc.task}: bundles are "
                                        "ranked lists, for ranking use cases only"}, 404)
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
    answer, hours = await uc.service.bundle(user_hash, start_us, k)
    uc.metrics.observe_request("bundle", 200, time.perf_counter() - started)
    return json_response({
        "generated_at": now.isoformat(),
        "hours": [{"starts_at": datetime.fromtimestamp(start_us / 1e6 + h * 3600, UTC).isoformat(),
                   uc.items_key: items} for h, items in enumerate(hours)],
        "model_version": answer.model_version, "known_user": answer.known_user,
        "fallback": answer.fallback, "precomputed": answer.cached,
    })
