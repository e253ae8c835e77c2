"""Structured logging for the server: one JSON object per line, tagged with the request's id.

`configure_logging(json=True)` puts a single orjson formatter on the root logger. Each line holds
ts (ISO 8601, UTC), level, logger, msg, request_id (when a request is being served), any fields
passed as `extra=`, and exc (the traceback) when there is one.

`RequestIdMiddleware` gives every HTTP request an id: the client's X-Request-ID when it is safe to
echo (1-64 chars of [A-Za-z0-9._-]), else a fresh 16-hex id. The id is in the `request_id`
context variable while the request runs (so every log line of that request carries it) and is
returned in the `x-request-id` response header.
"""

from __future__ import annotations

import json as stdjson
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

HEADER: Final = b"x-request-id"
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}


def new_request_id(header_value: str | None) -> str:
    """The client's id if it is 1-64 chars of [A-Za-z0-9._-], else a fresh random 16-hex id."""
    # fullmatch, not match: an id is echoed into headers and logs, so no trailing junk (or CR/LF).
    if header_value is not None and _SAFE_ID.fullmatch(header_value):
        return header_value
    return os.urandom(8).hex()  # ~0.3 us, and unlike uuid4 it needs no formatting


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: ts, level, logger, msg, request_id, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single line of JSON."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            out["request_id"] = rid
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS:
                # An extra named like a field already set must not overwrite it (e.g. extra={"level": 3});
                # extra={"request_id": ...} fills the field when no request is in context (a thread).
                out[key if key not in out else f"extra.{key}"] = value
        try:
            return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except (TypeError, orjson.JSONEncodeError):
            # orjson refuses e.g. ints over 64 bits even with default=; a log line must never be lost.
            return stdjson.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Plain text for a terminal, with the request id in brackets when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(rid)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record as text, with ` [request id]` after the logger name."""
        rid = request_id.get()
        record.rid = f" [{rid}]" if rid else ""
        try:
            return super().format(record)
        finally:
            del record.rid  # type: ignore[attr-defined]  # not an extra for the JSON handler


def configure_logging(json: bool, level: str = "INFO", *, stream: TextIO | None = None) -> logging.Handler:
    """Install one JSON (or text) handler on the root logger; calling it again replaces it."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    # Remove only the handlers installed here, so pytest's capture handlers and others survive.
    for handler in [h for h in root.handlers if getattr(h, "_feastflow", False)]:
        root.removeHandler(handler)
        handler.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler._feastflow = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    return handler


class RequestIdMiddleware:
    """Pure ASGI middleware: sets `request_id` for each HTTP request and returns it as x-request-id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Tag the request with an id, run the app, add the id to the response headers."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent: str | None = None
        for name, value in scope["headers"]:
            if name == HEADER:  # ASGI header names are lower-case bytes
                sent = value.decode("latin-1")
                break
        rid = new_request_id(sent)
        raw = rid.encode("ascii")
        # Routes and handlers can also read it as request.state.request_id.
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != HEADER]
                headers.append((HEADER, raw))
                message = {**message, "headers": headers}
            await send(message)

        token = request_id.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
