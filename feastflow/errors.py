"""Every error feastflow raises on purpose, under one base that says how to report it.

The CLI turns a `FeastflowError` into its message, its hint and its exit code in one place; the
server into its HTTP status. Each class also derives from the builtin it used to be, so callers
that catch `ValueError` or `RuntimeError` keep working.
"""

from __future__ import annotations

from typing import Any


class FeastflowError(Exception):
    """An error with an exit code for the CLI, an HTTP status for the server and a hint."""

    exit_code: int = 1
    http_status: int = 500
    hint: str = ""

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class InputError(FeastflowError, ValueError):
    """What the user gave cannot be used (an option, a setting, a value); the message says why."""

    exit_code = 2
    http_status = 422


class SpecError(FeastflowError, ValueError):
    """The model spec is missing or invalid; the message names the file and the field."""

    exit_code = 2
    http_status = 422


class StreamUnavailable(FeastflowError, RuntimeError):
    """The broker cannot take or give events right now; nothing was appended."""

    http_status = 503
    hint = "is the Redis at REDIS_URL up?"


class OnlineStoreError(FeastflowError):
    """The online store did not answer (connection refused, reset, or a Redis error reply)."""

    http_status = 503


class CircuitOpen(FeastflowError):
    """The breaker refused the call without trying it."""

    http_status = 503


class MonitorError(FeastflowError, RuntimeError):
    """Monitoring cannot run on what is there; the message says what to run first."""

    exit_code = 2


class RegistryError(FeastflowError, RuntimeError):
    """The registry does not hold what was asked for; the message says what to run first."""

    exit_code = 2
    http_status = 503


class RegistryUnreachable(RegistryError):
    """The registry could not be asked (server down, database file missing or locked)."""


class RegistryMissing(RegistryError):
    """The tracking URI names a SQLite file that does not exist: MLflow would create an empty one."""


class ModelChecksumMismatch(RegistryError):
    """A copy of a model file is not the file that was registered (truncated, replaced, empty)."""

    reason = "model_checksum_mismatch"


class RequestError(FeastflowError, ValueError):
    """A request that cannot be served as sent; `detail` is the 422 body's list."""

    exit_code = 2
    http_status = 422

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__(detail[0]["msg"] if detail else "invalid request")
        self.detail = detail
