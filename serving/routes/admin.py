"""Admin endpoints, API key required: reload models now, flush the caches (every use case)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from serving.routes.common import json_response, require_key, state


async def reload(request: Request) -> Response:
    """Ask the registry now, for every use case; swap every variant whose alias moved. The top
    level is the default use case's result, `use_cases` holds each one's."""
    if (denied := require_key(request)) is not None:
        return denied
    return json_response(await state(request).reload())


async def flush_caches(request: Request) -> Response:
    """Empty the prediction (L1) and feature (L2) caches of every use case: `flushed` totals
    the entries, `use_cases` counts them per use case."""
    if (denied := require_key(request)) is not None:
        return denied
    per_case = {name: uc.service.flush_caches()
                for name, uc in state(request).use_cases.items() if uc.service is not None}
    total = {"l1": sum(c["l1"] for c in per_case.values()),
             "l2": sum(c["l2"] for c in per_case.values())}
    return json_response({"flushed": total, "use_cases": per_case})
