"""What every route shares: the app's state, JSON responses, the API key check."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from feastflow.processor import BackgroundProcessor
    from feastflow.spec import ModelSpec
    from serving.events import EventIntake
    from serving.metrics import ServingMetrics
    from serving.models import ModelHolder
    from serving.service import PredictionService
    from serving.settings import ServingSettings

API_KEY_HEADER = "x-api-key"
# nginx's "client closed request": the client left before its body was read; counted under
# this status in the metrics, never answered (and never a 422: the request was not invalid).
CLIENT_CLOSED = 499


@dataclass
class UseCaseState:
    """One served use case: its spec, models, service, intake and generated request schema.

    `unavailable` set: the use case could not be set up (its predict and events answer 503 with
    the reason, /readyz lists it); the others are served all the same.
    """

    name: str
    spec: ModelSpec | None
    metrics: ServingMetrics
    holder: ModelHolder | None = None
    service: PredictionService | None = None
    reload: Any = None  # async () -> dict: ask the registry now and swap what moved
    startup_error: str | None = None
    intake: EventIntake | None = None  # POST /v1/{use_case}/events; None without a stream
    stream_processor: BackgroundProcessor | None = None  # embedded profile: in-process
    unavailable: str | None = None
    request_type: Any = None  # the msgspec Struct generated from the contract
    retry: bool = False  # its feature store was not usable: a reload tries to set it up again
    probes: dict[str, Any] = field(default_factory=dict)  # /readyz checks still in flight
    logged_reasons: set[str] = field(default_factory=set)  # /readyz logs only changes
    # derived from the spec (the hot path reads plain attributes)
    task: str = field(default="", init=False)
    entity: str = field(default="", init=False)
    hash_entity: bool = field(default=False, init=False)
    items_key: str = field(default="items", init=False)
    item_key: str = field(default="item", init=False)

    def __post_init__(self) -> None:
        spec = self.spec
        if spec is None:
            return
        log = spec.event_log
        self.task = spec.task
        self.entity = log.entity
        self.hash_entity = log.entity in log.hashed_columns
        if log.item is not None:
            self.item_key = log.item
            self.items_key = spec.serving.items_key or f"{log.item}s"

    @property
    def served(self) -> bool:
        """Whether predict answers (with the model or the fallbacks) rather than 503."""
        return self.unavailable is None and self.service is not None


@dataclass
class ServerState:
    """Everything the lifespan built; routes read it from `request.app.state.core`.

    `default` names the use case of the routes without one (`/v1/predict`, `/v1/events`,
    `/v1/users/{user_id}/bundle`).
    """

    settings: ServingSettings
    metrics: ServingMetrics  # the registry's view for the default use case
    use_cases: dict[str, UseCaseState]
    default: str
    reload: Any  # async () -> dict: every use case asks the registry now
    unknown_metrics: ServingMetrics | None = None  # requests naming no known use case
    docs: dict[str, bytes] = field(default_factory=dict)  # rendered OpenAPI and /docs, by path

    def get(self, name: str | None) -> UseCaseState | None:
        """A use case by name (None: the default), if served."""
        return self.use_cases.get(self.default if name is None else name)

    def unknown(self, name: str) -> dict[str, str]:
        """The 404 body for a use case this server does not know."""
        known = ", ".join(sorted(self.use_cases)) or "none"
        return {"detail": f"unknown use case {name!r}; known use cases: {known}"}

    # the default use case's parts (what one-use-case callers and tools read)
    @property
    def spec(self) -> ModelSpec | None:
        """The default use case's spec."""
        uc = self.get(None)
        return uc.spec if uc else None

    @property
    def holder(self) -> ModelHolder | None:
        """The default use case's models."""
        uc = self.get(None)
        return uc.holder if uc else None

    @property
    def service(self) -> PredictionService | None:
        """The default use case's service."""
        uc = self.get(None)
        return uc.service if uc else None

    @property
    def intake(self) -> EventIntake | None:
        """The default use case's event intake."""
        uc = self.get(None)
        return uc.intake if uc else None


def state(request: Request) -> ServerState:
    """The app's state."""
    return request.app.state.core


def json_response(content: Any, status: int = 200) -> Response:
    """orjson-encoded JSON."""
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def use_case_of(request: Request) -> tuple[UseCaseState | None, Response | None]:
    """The use case the path names (none: the default), or the 404/503 to answer."""
    app = state(request)
    name = request.path_params.get("use_case")
    uc = app.get(name)
    if uc is None:
        return None, json_response(app.unknown(name or app.default), 404)
    if not uc.served:
        return None, json_response(
            {"detail": f"use case {uc.name!r} is not available: {uc.unavailable}"}, 503)
    return uc, None


def error_response(loc: list[str | int], msg: str, status: int = 422) -> Response:
    """A 4xx in FastAPI's error shape: the field (`loc`) and the reason (`msg`)."""
    return json_response({"detail": [{"loc": loc, "msg": msg, "type": "value_error"}]}, status)


def key_denied(expected: str | None, given: str | None) -> tuple[int, str] | None:
    """None when `given` is the server's API key; else the status (403/401) and the reason."""
    if not expected:
        return 403, "this endpoint needs FEASTFLOW_API_KEY set on the server"
    if not hmac.compare_digest((given or "").encode(), expected.encode()):
        return 401, f"missing or wrong {API_KEY_HEADER} header"
    return None


def too_large(max_bytes: int) -> str:
    """The 413 reason."""
    return f"request body larger than {max_bytes} bytes"


def events_limit_hint(settings: ServingSettings) -> str:
    """What the events body limit is made of (appended to its 413 reason)."""
    return (f" (at most {settings.max_events_per_request} events of at most "
            f"{settings.max_event_bytes} bytes each as compact JSON: send smaller batches)")


def require_key(request: Request) -> Response | None:
    """None when the request carries the API key; else the 401/403 to answer."""
    denied = key_denied(state(request).settings.api_key, request.headers.get(API_KEY_HEADER))
    return None if denied is None else json_response({"detail": denied[1]}, denied[0])
