"""Errors the server can answer with; each knows its HTTP status.

    ServingError (500)
    ├── ModelNotLoaded (503)      no model could be loaded: train and promote first
    └── FeaturesUnavailable (503) the online store did not answer

Request validation errors are FastAPI's 422 with the field and the reason. A single handler
maps these; an unknown exception becomes a plain 500 that never echoes its message.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)


class ServingError(Exception):
    """Base of the server's errors."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotLoaded(ServingError):
    """No model is loaded: the registry has no usable version under the alias."""

    status_code = 503


class FeaturesUnavailable(ServingError):
    """The online store could not be read."""

    status_code = 503


def install_handlers(app: FastAPI) -> None:
    """Map ServingError to its status and hide the text of unexpected errors."""

    @app.exception_handler(ServingError)
    async def _serving_error(_: Request, exc: ServingError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)
