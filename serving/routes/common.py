"""What every route shares: the app's state, JSON responses, the API key check."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
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


@dataclass
class AppState:
    """Everything the lifespan built; routes read it from `request.app.state.core`."""

    settings: ServingSettings
    spec: ModelSpec | None
    metrics: ServingMetrics
    holder: ModelHolder
    service: PredictionService
    reload: Any  # async () -> dict: ask the registry now and swap what moved
    startup_error: str | None = None
    intake: EventIntake | None = None  # POST /v1/events; None when no stream could be opened
    stream_processor: BackgroundProcessor | None = None  # embedded profile: in-process


def state(request: Request) -> AppState:
    """The app's state."""
    return request.app.state.core


def json_response(content: Any, status: int = 200) -> Response:
    """orjson-encoded JSON."""
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


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


def require_key(request: Request) -> Response | None:
    """None when the request carries the API key; else the 401/403 to answer."""
    denied = key_denied(state(request).settings.api_key, request.headers.get(API_KEY_HEADER))
    return None if denied is None else json_response({"detail": denied[1]}, denied[0])
