"""Admin endpoints, API key required: reload models now, flush the caches."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from serving.routes.common import json_response, require_key, state


async def reload(request: Request) -> Response:
    """Ask the registry now; swap every variant whose alias moved."""
    if (denied := require_key(request)) is not None:
        return denied
    return json_response(await state(request).reload())


async def flush_caches(request: Request) -> Response:
    """Empty the prediction (L1) and feature (L2) caches."""
    if (denied := require_key(request)) is not None:
        return denied
    return json_response({"flushed": state(request).service.flush_caches()})
