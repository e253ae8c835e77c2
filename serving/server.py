"""How the server is run: uvicorn with limits that a slow, idle or greedy client cannot hold.

uvicorn alone kept 500 slow-header, slow-body and idle connections open for as long as their
clients liked (measured: all still open after 40 s): it has no deadline for a request's head,
none before the first request of a connection, and no read timeout for a body. Here:
- the head (request line and headers) must arrive within `head_timeout_seconds` of the
  connection opening or the previous response, and stay under `max_head_bytes`
  (`GuardedHttpToolsProtocol`; an idle connection is closed the same way);
- the body must arrive within `body_timeout_seconds` of the head (`read_body_within`, in the
  ASGI app: a 408 that closes the connection);
- at most `max_connections` connections and requests in flight (uvicorn's `limit_concurrency`:
  over it, a fast 503), and idle keep-alive connections close after `keep_alive_seconds`.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from starlette.types import Message, Receive
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.settings import ServingSettings

_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
              b"connection: close\r\n\r\n")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size cap on each request's head."""

    def __init__(self, *args: Any, head_timeout_s: float = 10.0, max_head_bytes: int = 16_384,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s
        self.max_head_bytes = max_head_bytes
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._in_head = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request's head."""
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock."""
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; refuse a head over the size cap."""
        if not self._in_head:
            super().data_received(data)
            return
        self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head_bytes:
            self._refuse(_TOO_LARGE)

    def on_headers_complete(self) -> None:
        """The head is in: its clock stops (the body has its own, in the app)."""
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        """Start the clock for the next request's head, unless it is already queued."""
        queued = bool(self.pipeline)
        super().on_response_complete()
        if not queued and not self.transport.is_closing():
            self._await_head()

    def _await_head(self) -> None:
        self._stop_head_timer()
        self._in_head, self._head_bytes = True, 0
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        # A connection that never sent a byte is closed silently (as nginx does), else a 408.
        self._refuse(_TIMEOUT if self._head_bytes else b"")

    def _refuse(self, response: bytes) -> None:
        self._stop_head_timer()
        self._in_head = False
        if not self.transport.is_closing():
            if response:
                self.transport.write(response)
            self.transport.close()


class BodyTimeout(Exception):
    """The request's body did not arrive within its deadline."""


def read_body_within(receive: Receive, seconds: float) -> Receive:
    """`receive` with a deadline, `seconds` from now, for the whole body (BodyTimeout after);
    once the body is complete it is passed through untouched."""
    deadline = asyncio.get_running_loop().time() + seconds
    done = False

    async def timed() -> Message:
        nonlocal done
        if done:
            return await receive()
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise BodyTimeout(f"request body not received within {seconds:g} s") from None
        done = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return timed


def uvicorn_options(settings: ServingSettings) -> dict[str, Any]:
    """The uvicorn settings that enforce the connection limits (see the module docstring)."""
    return {
        "http": functools.partial(GuardedHttpToolsProtocol,
                                  head_timeout_s=settings.head_timeout_seconds,
                                  max_head_bytes=settings.max_head_bytes),
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": settings.keep_alive_seconds,
    }
