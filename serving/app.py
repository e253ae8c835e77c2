"""The prediction server: a Starlette app whose state is built in the lifespan.

Start-up never fails for want of Redis or the registry: the server comes up degraded (last good
model from disk, answers from fallbacks) and says so on /readyz.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client import disable_created_metrics
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feastflow.online import OnlineReader, OnlineStoreError, open_reader
from feastflow.processor import BackgroundProcessor, build_processor
from feastflow.scoring import FeaturePlan
from feastflow.spec import ModelSpec, load_spec
from feastflow.store import open_store
from feastflow.stream import open_event_stream
from serving.events import EventIntake
from serving.logs import RequestIdMiddleware, configure_logging
from serving.metrics import ServingMetrics
from serving.models import ModelHolder
from serving.request_log import PredictionLog
from serving.routes import admin, events, health, predict
from serving.routes.common import AppState, json_response, too_large
from serving.service import PredictionService
from serving.settings import ServingSettings, get_serving_settings

log = logging.getLogger(__name__)

# A registry that is down must not hold start-up or a reload for minutes of HTTP retries.
for _name, _value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
                      ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0.2"),
                      ("MLFLOW_HTTP_REQUEST_TIMEOUT", "5"),
                      ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")):
    os.environ.setdefault(_name, _value)


def build_state(settings: ServingSettings, reader: OnlineReader | None = None) -> AppState:
    """Load the spec, the feature plan and the models (blocking: call it off the event loop)."""
    metrics = ServingMetrics()
    spec, plan, startup_error = None, None, None
    try:
        spec = load_spec(settings.use_case, settings.feature_repo)
        store = open_store(settings)
        plan = FeaturePlan.from_store(store, spec)
        reader = reader or open_reader(settings, store)
    except Exception as e:  # no feature registry yet: serve static defaults, say why
        startup_error = f"feature store not usable: {e}: run `feastflow apply` first"
        log.error(startup_error)
    if spec is None:
        spec = load_spec(settings.use_case, settings.feature_repo)
    holder = ModelHolder(spec, plan, {"champion": settings.model_alias,  # type: ignore[arg-type]
                                      "challenger": settings.challenger_alias},
                         settings.models_dir, settings.tracking_uri, settings.artifacts_uri)
    if plan is not None:
        holder.load_initial()
    prediction_log = PredictionLog(settings.served_log_dir, settings.request_log_sample,
                                   settings.request_log_flush_seconds,
                                   on_drop=metrics.request_log_dropped)
    service = PredictionService(settings, spec, holder, reader or _NoStore(), metrics,
                                prediction_log)
    for model in holder.models.values():
        metrics.set_model_version(model.variant, model.version)
    lock = asyncio.Lock()

    async def reload() -> dict[str, Any]:
        async with lock:
            if plan is None:
                return {"swapped": [], "models": {}, "error": startup_error}
            changed = await asyncio.to_thread(holder.check_registry)
            holder.install(changed)
            service.load_precomputed(settings.precomputed_dir)
            return {"swapped": [f"{m.variant}:v{m.version}" for m in changed],
                    "models": {v: m.version for v, m in holder.models.items()},
                    "registry_error": holder.registry_error}

    intake, processor = _event_intake(settings, spec, plan is not None)
    return AppState(settings, spec, metrics, holder, service, reload, startup_error, intake,
                    processor)


def _event_intake(settings: ServingSettings, spec: ModelSpec, store_ok: bool
                  ) -> tuple[EventIntake | None, BackgroundProcessor | None]:
    # The Redis profile appends to a Redis Stream that `feastflow stream` reads; the embedded
    # profile runs the same processor in this process over an in-process stream.
    if spec.realtime is None:
        return None, None
    stream = open_event_stream(settings, spec.name)
    processor = None
    if settings.profile == "embedded":
        if not store_ok:
            return None, None
        processor = BackgroundProcessor(build_processor(settings, spec, stream=stream))
    return EventIntake(stream, settings.user_hash_secret), processor


class _NoStore:
    """The reader when no feature store could be opened: every read fails into the fallbacks."""

    async def read(self, reads: Any) -> Any:
        raise OnlineStoreError("no feature store")

    async def ping(self) -> bool:
        return False

    async def close(self) -> None:
        return None


class BodySizeLimit:
    """413 for bodies over `max_bytes`, announced (content-length) or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = json_response({"detail": too_large(self.max_bytes)}, 413)
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


async def _periodic(seconds: float, work: Callable[[], Awaitable[Any]], name: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await work()
        except Exception:  # a failed round is logged; the next one tries again
            log.exception("%s failed", name)


def _tune_garbage_collector() -> None:
    # The caches hold hundreds of thousands of objects; CPython's default thresholds made full
    # collections stop the loop for ~100 ms (bench/serving.py bodies, wrk -c8: p99 101 ms, 22 ms
    # with gc disabled, 22 ms with these thresholds). Objects built at start-up (model, Feast
    # registry) are frozen out of every collection.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


def create_app(settings: ServingSettings | None = None, reader: OnlineReader | None = None
               ) -> ASGIApp:
    """The app; settings default to the environment's, the reader to the profile's."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        resolved = settings or get_serving_settings()
        configure_logging(resolved.log_json)
        core = await asyncio.to_thread(build_state, resolved, reader)
        app.state.core = core
        _tune_garbage_collector()
        await core.service.refresh_popular()
        core.service.load_precomputed(resolved.precomputed_dir)
        tasks = [asyncio.create_task(_periodic(resolved.popular_refresh_seconds,
                                               core.service.refresh_popular, "popular refresh"))]
        if resolved.registry_poll_seconds > 0:
            tasks.append(asyncio.create_task(
                _periodic(resolved.registry_poll_seconds, core.reload, "registry poll")))
        try:
            yield
        finally:
            if core.stream_processor is not None:
                await asyncio.to_thread(core.stream_processor.stop)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await core.service.close()
            await asyncio.to_thread(core.service.prediction_log.close)

    disable_created_metrics()  # halves /metrics: no *_created series
    resolved_limit = (settings or get_serving_settings()).max_body_bytes
    predict_endpoint = predict.PredictEndpoint(None)
    app = Starlette(
        routes=[
            Route("/v1/predict", predict_endpoint, methods=["POST"]),
            Route("/v1/users/{user_id}/bundle", predict.bundle, methods=["GET"]),
            Route("/v1/events", events.post_events, methods=["POST"]),
            Route("/healthz", health.healthz, methods=["GET"]),
            Route("/readyz", health.readyz, methods=["GET"]),
            Route("/metrics", health.metrics, methods=["GET"]),
            Route("/admin/reload", admin.reload, methods=["POST"]),
            Route("/admin/cache/flush", admin.flush_caches, methods=["POST"]),
        ],
        middleware=[Middleware(BodySizeLimit, max_bytes=resolved_limit)],
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
        lifespan=lifespan,
    )
    predict_endpoint.starlette_app = app
    # Outermost, so that even the catch-all 500 carries the request id (header and log line);
    # POST /v1/predict bypasses the framework entirely (it tags its own request id).
    return predict.FastPath(app, predict_endpoint, RequestIdMiddleware(app))


async def _http_error(request: Request, exc: Exception) -> Response:
    # 404, 405 and the like in the same JSON shape as every other error.
    assert isinstance(exc, HTTPException)
    response = json_response({"detail": exc.detail}, exc.status_code)
    response.headers.update(exc.headers or {})  # e.g. `allow` on a 405
    return response


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Never echo an unexpected error's text to the client; it is in the log with the request id.
    log.exception("unhandled error on %s", request.url.path)
    return json_response({"detail": "internal error"}, 500)
