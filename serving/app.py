"""The prediction server: a Starlette app whose state is built in the lifespan.

One server serves every use case of the feature repo (or those FEASTFLOW_USE_CASES names), each
with its own spec, feature store (its Feast project), models, caches, fallbacks and request log:
`POST /v1/{use_case}/predict`; the routes without a use case serve FEASTFLOW_USE_CASE (the
flagship by default).

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
from feastflow.spec import ModelSpec, load_spec, use_cases
from feastflow.store import open_store
from feastflow.stream import MemoryEventStream, open_event_stream
from serving.events import EventIntake
from serving.logs import RequestIdMiddleware, configure_logging
from serving.metrics import ServingMetrics
from serving.models import ModelHolder, serving_registry
from serving.request_log import PredictionLog
from serving.resilience import describe
from serving.routes import admin, docs, events, health, predict
from serving.routes.common import (
    ServerState,
    UseCaseState,
    events_limit_hint,
    json_response,
    too_large,
)
from serving.routes.docs import render_docs
from serving.schemas import request_type
from serving.server import BodyTimeout
from serving.service import build_service
from serving.settings import ServingSettings, get_serving_settings

log = logging.getLogger(__name__)

# A registry that is down must not hold start-up or a reload for minutes of HTTP retries.
# MLflow reads the backoff factor as an int ("0.2" made every REST call fail before it was sent).
for _name, _value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
                      ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                      ("MLFLOW_HTTP_REQUEST_TIMEOUT", "5"),
                      ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")):
    os.environ.setdefault(_name, _value)


def served_use_cases(settings: ServingSettings) -> list[str]:
    """The use cases to serve: FEASTFLOW_USE_CASES if set, else every folder with a model.yaml
    (and the default use case, so that a missing one says why)."""
    if settings.use_cases:
        return list(dict.fromkeys(n.strip() for n in settings.use_cases.split(",") if n.strip()))
    names = use_cases(settings.feature_repo)
    return names if settings.use_case in names else [settings.use_case, *names]


def build_state(settings: ServingSettings, reader: OnlineReader | None = None) -> ServerState:
    """Every use case's state (blocking: call it off the event loop). One that cannot be set up
    answers 503 with the reason; the others are served all the same."""
    metrics = ServingMetrics(use_case=settings.use_case)
    states: dict[str, UseCaseState] = {}
    for name in served_use_cases(settings):
        bound = metrics if name == settings.use_case else metrics.for_use_case(name)
        states[name] = build_use_case(settings, name, bound,
                                      reader if name == settings.use_case else None)
    lock = asyncio.Lock()
    app = ServerState(settings, metrics, states, settings.use_case, None,
                   unknown_metrics=metrics.for_use_case("unknown"))

    async def reload() -> dict[str, Any]:
        # One use case at a time: MLflow's client is configured per use case (process-global).
        async with lock:
            results: dict[str, Any] = {}
            for name, uc in list(app.use_cases.items()):
                if uc.retry:
                    uc = await _retry(settings, app, uc)
                if uc.reload is None:
                    results[name] = {"swapped": [], "models": {}, "error": uc.unavailable}
                    continue
                try:
                    results[name] = await uc.reload()
                except Exception as e:  # one use case's failure must not stop the others
                    log.exception("reload of %s failed", name)
                    results[name] = {"swapped": [], "models": {}, "error": describe(e)}
            default = results.get(app.default, {"swapped": [], "models": {}})
            return {**default, "use_cases": results}

    app.reload = reload
    return app


async def _retry(settings: ServingSettings, app: ServerState, old: UseCaseState) -> UseCaseState:
    # Its feature store was not usable at start: it may have been applied since.
    if old.spec is None or not await asyncio.to_thread(_store_ready, settings, old.spec):
        return old
    fresh = await asyncio.to_thread(build_use_case, settings, old.name, old.metrics, None)
    app.use_cases[old.name] = fresh
    await _close_use_case(old)
    if fresh.service is not None:
        await fresh.service.refresh_popular()
        fresh.service.load_precomputed(settings.precomputed_dir_of(old.name))
        await fresh.service.warm_up()
    log.info("use case %s is set up now", old.name)
    return fresh


def _store_ready(settings: ServingSettings, spec: ModelSpec) -> bool:
    try:
        FeaturePlan.from_store(open_store(settings, spec.name), spec)
    except Exception:  # still not applied
        return False
    return True


def build_use_case(settings: ServingSettings, name: str, metrics: ServingMetrics,
                   reader: OnlineReader | None = None) -> UseCaseState:
    """One use case's spec, feature plan, models, service and intake (blocking)."""
    try:
        spec = load_spec(name, settings.feature_repo)
        request = request_type(spec, settings.max_k)
    except Exception as e:  # an invalid spec: this use case cannot be served
        reason = f"model spec not usable: {e}"
        log.error("use case %s: %s", name, reason)
        return UseCaseState(name, None, metrics, unavailable=reason)
    plan, startup_error = None, None
    try:
        store = open_store(settings, name)
        plan = FeaturePlan.from_store(store, spec)
        reader = reader or open_reader(settings, store)
    except Exception as e:  # no feature registry yet: serve static defaults, say why
        startup_error = (f"feature store not usable: {describe(e)}: run `feastflow apply` "
                         "first")
        log.error("use case %s: %s", name, startup_error)
    registry = serving_registry(settings.tracking_uri, settings.artifacts_uri,
                                explicit=settings.mlflow_tracking_uri is not None)
    holder = ModelHolder(spec, plan, {"champion": settings.model_alias,  # type: ignore[arg-type]
                                      "challenger": settings.challenger_alias},
                         settings.models_dir, registry)
    if plan is not None:
        holder.load_initial()
    prediction_log = PredictionLog(settings.served_dir(name), settings.request_log_sample,
                                   settings.request_log_flush_seconds,
                                   on_drop=metrics.request_log_dropped)
    service = build_service(settings, spec, holder, reader or _NoStore(), metrics, prediction_log)
    for model in holder.models.values():
        metrics.set_model_version(model.variant, model.version)
    precomputed = settings.precomputed_dir_of(name)

    async def reload() -> dict[str, Any]:
        if plan is None:
            return {"swapped": [], "models": {}, "error": startup_error}
        changed = await asyncio.to_thread(holder.check_registry)
        await service.warm_up(changed)  # before they answer anyone
        holder.install(changed)
        service.load_precomputed(precomputed)
        return {"swapped": [f"{m.variant}:v{m.version}" for m in changed],
                "models": {v: m.version for v, m in holder.models.items()},
                "registry_error": holder.registry_error}

    intake, processor = _event_intake(settings, spec, plan is not None)
    # The default use case keeps answering from its fallbacks without a feature store (as the
    # one-use-case server did); another one is not deployed yet: 503 until a reload finds it.
    unavailable = (startup_error if plan is None and name != settings.use_case else None)
    return UseCaseState(name, spec, metrics, holder, service, reload, startup_error, intake,
                        processor, unavailable=unavailable, request_type=request,
                        retry=plan is None)


async def _close_use_case(uc: UseCaseState) -> None:
    if uc.stream_processor is not None:
        await asyncio.to_thread(uc.stream_processor.stop)
    if uc.service is not None:
        await uc.service.close()
        await asyncio.to_thread(uc.service.prediction_log.close)


def _event_intake(settings: ServingSettings, spec: ModelSpec, store_ok: bool
                  ) -> tuple[EventIntake | None, BackgroundProcessor | None]:
    # The Redis profile appends to a Redis Stream that `feastflow stream` reads; the embedded
    # profile runs the same processor in this process over an in-process stream.
    if spec.realtime is None:
        return None, None
    stream = open_event_stream(settings, spec.name)
    processor = None
    if isinstance(stream, MemoryEventStream):  # an in-process stream: this process applies it
        if not store_ok:
            return None, None
        processor = BackgroundProcessor(build_processor(settings, spec, stream=stream))
    return EventIntake(stream, settings.user_hash_secret, spec.event_log), processor


class _NoStore:
    """The reader when no feature store could be opened: every read fails into the fallbacks."""

    async def read(self, reads: Any) -> Any:
        raise OnlineStoreError("no feature store")

    async def ping(self) -> bool:
        return False

    async def close(self) -> None:
        return None


class BodySizeLimit:
    """413 for bodies over `max_bytes` (`events_max_bytes` on the events routes, whose batches
    are larger), announced (content-length) or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int, events_max_bytes: int | None = None,
                 events_hint: str = "") -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.events_max_bytes = events_max_bytes or max_bytes
        self.events_hint = events_hint  # why the events limit is what it is

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        events = scope["path"].endswith("/events")
        limit = self.events_max_bytes if events else self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._too_large(scope, receive, send, events)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._too_large(scope, receive, send, events)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, events: bool) -> None:
        detail = (too_large(self.events_max_bytes) + self.events_hint if events
                  else too_large(self.max_bytes))
        response = json_response({"detail": detail}, 413)
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


def _one_blas_thread() -> None:
    # A request's linear algebra is small (a retrieval fold-in: 64 x 64); OpenBLAS's second
    # thread only contends with the event loop on 2 cores: the fold-in took 0.1-0.2 ms at p50
    # and 9-14 ms at its max with 2 threads, 0.23 ms at its max with 1 (load ~3).
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, "blas")


def create_app(settings: ServingSettings | None = None, reader: OnlineReader | None = None
               ) -> ASGIApp:
    """The app; settings default to the environment's, the reader to the profile's."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        resolved = settings or get_serving_settings()
        configure_logging(resolved.log_json)
        core = await asyncio.to_thread(build_state, resolved, reader)
        app.state.core = core
        core.docs.update(render_docs(core))
        _tune_garbage_collector()
        _one_blas_thread()
        for name, uc in core.use_cases.items():
            if uc.service is not None:
                await uc.service.refresh_popular()
                uc.service.load_precomputed(resolved.precomputed_dir_of(name))
                # Before uvicorn listens: the first request must not pay for a cold model.
                await uc.service.warm_up()

        async def refresh_popular() -> None:
            for uc in list(core.use_cases.values()):
                if uc.service is not None:
                    await uc.service.refresh_popular()

        tasks = [asyncio.create_task(_periodic(resolved.popular_refresh_seconds,
                                               refresh_popular, "popular refresh"))]
        if resolved.registry_poll_seconds > 0:
            tasks.append(asyncio.create_task(
                _periodic(resolved.registry_poll_seconds, core.reload, "registry poll")))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for uc in core.use_cases.values():
                await _close_use_case(uc)

    disable_created_metrics()  # halves /metrics: no *_created series
    limits = settings or get_serving_settings()
    predict_endpoint = predict.PredictEndpoint(None)
    app = Starlette(
        routes=[
            Route("/v1/predict", predict_endpoint, methods=["POST"]),
            Route("/v1/{use_case}/predict", predict_endpoint, methods=["POST"]),
            Route("/v1/users/{user_id}/bundle", predict.bundle, methods=["GET"]),
            Route("/v1/events", events.post_events, methods=["POST"]),
            Route("/v1/{use_case}/events", events.post_events, methods=["POST"]),
            Route("/openapi.json", docs.openapi, methods=["GET"]),
            Route("/docs", docs.docs_page, methods=["GET"]),
            Route("/healthz", health.healthz, methods=["GET"]),
            Route("/readyz", health.readyz, methods=["GET"]),
            Route("/metrics", health.metrics, methods=["GET"]),
            Route("/admin/reload", admin.reload, methods=["POST"]),
            Route("/admin/cache/flush", admin.flush_caches, methods=["POST"]),
        ],
        middleware=[Middleware(BodySizeLimit, max_bytes=limits.max_body_bytes,
                               events_max_bytes=limits.max_events_body_bytes,
                               events_hint=events_limit_hint(limits))],
        exception_handlers={HTTPException: _http_error, BodyTimeout: _body_timeout,
                            Exception: _unexpected},
        lifespan=lifespan,
    )
    predict_endpoint.starlette_app = app
    # Outermost, so that even the catch-all 500 carries the request id (header and log line);
    # POST /v1/predict and /v1/{use_case}/predict bypass the framework entirely (they tag their
    # own request id).
    return predict.FastPath(app, predict_endpoint, RequestIdMiddleware(app),
                            limits.body_timeout_seconds)


async def _http_error(request: Request, exc: Exception) -> Response:
    # 404, 405 and the like in the same JSON shape as every other error.
    assert isinstance(exc, HTTPException)
    response = json_response({"detail": exc.detail}, exc.status_code)
    response.headers.update(exc.headers or {})  # e.g. `allow` on a 405
    return response


async def _body_timeout(request: Request, exc: Exception) -> Response:
    # A client too slow to send its body: told so, and its connection closed.
    response = json_response({"detail": str(exc)}, 408)
    response.headers["connection"] = "close"
    return response


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Never echo an unexpected error's text to the client; it is in the log with the request id.
    log.exception("unhandled error on %s", request.url.path)
    return json_response({"detail": "internal error"}, 500)
