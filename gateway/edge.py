"""The connection edge: what a client may cost the gateway before its request is handled.

aiohttp's defaults trust the client: an hour to send a request head, no limit
on open connections, and a malformed request answered in text/plain with the
client's own bytes echoed back and a full traceback logged. Here every
connection is held to the `[server]` limits:

    read timeout   a request's head must arrive within `read_timeout_s` of the
                   connection opening (or of its first byte after an idle
                   keep-alive), and its body within `read_timeout_s` of the head.
                   A client trickling a byte a second (slowloris) gets a 408 and is
                   closed. A late head never became a request: an edge event. A
                   late body fails its request (`request_timeout`, its own log line).
    header limits  at most `max_header_count` headers, no line longer than
                   `max_header_line_bytes`: 431 `headers_too_large`.
    malformed      400 `bad_http` in the OpenAI error shape, never the client's
                   bytes, and a throttled log line (`edge_events.py`), never a traceback.
    the cap        at most `max_connections` open connections per worker, so a flood
                   of stalled sockets never reaches the open-file limit
                   (`connection_cap` checks at startup that the cap fits under it).
                   At the cap a new connection takes the place of the one that has
                   owed its request head the longest (that one gets a 503): stalled
                   connections churn among themselves instead of starving the
                   others. With none owing a head (every connection busy with a
                   request), the new one gets the 503, before aiohttp sees it.

`EdgeRunner` is aiohttp's `AppRunner` with `EdgeServer` (the cap) and
`EdgeHandler` (a `RequestHandler` with the timers and the error shape) in
place of aiohttp's own. They read a few of aiohttp's private fields
(`_waiter`, `_messages`, `_request_count`, `_request_in_progress`,
`_connections`); tests/test_edge.py holds them to the installed aiohttp.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http import HttpProcessingError, RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from .config import Server as ServerConfig
from .edge_events import EdgeEvents
from .errors import GatewayError

# Connections asyncio may accept before the cap sees them: it accepts up to the
# listen backlog (aiohttp's 128) per loop turn and creates their protocols a turn later.
ACCEPT_BURST = 2 * 128
RESERVED_FDS = 64  # the listening socket, the log file, the event loop, stdio, metrics files


@dataclass(frozen=True, slots=True)
class Limits:
    read_timeout_s: float
    keepalive_s: float
    max_connections: int
    max_header_count: int
    max_header_line_bytes: int

    @classmethod
    def of(cls, server: ServerConfig, max_connections: int) -> Limits:
        return cls(server.read_timeout_s, server.keepalive_s, max_connections, server.max_header_count,
                   server.max_header_line_bytes)


# --- the errors of the edge, and how they are written without a request -----------------

def too_many_connections(limit: int) -> GatewayError:
    return GatewayError(503, "too_many_connections",
                        f"The gateway is at its limit of {limit} open connections; retry shortly", retry_after=1)


def read_timeout(part: str, seconds: float) -> GatewayError:
    return GatewayError(408, "request_timeout", f"The request {part} did not arrive within {seconds:g}s")


def malformed(exc: BaseException | None, limits: Limits) -> GatewayError:
    """The client's request could not be parsed: what it is told (never its own bytes).

        >>> limits = Limits(30, 75, 100, 100, 8190)
        >>> malformed(BadHttpMessage("Invalid header token:\\n\\n  b'Bad Header'\\n       ^"), limits).message
        'Malformed HTTP request: Invalid header token'
        >>> malformed(LineTooLong(b"aaaa...", 8190), limits).status
        431
    """
    if isinstance(exc, LineTooLong) or (isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message):
        return GatewayError(431, "headers_too_large",
                            f"The request headers are over the limit: at most {limits.max_header_count} headers, "
                            f"no line longer than {limits.max_header_line_bytes} bytes")
    return GatewayError(400, "bad_http", f"Malformed HTTP request: {_reason(exc)}")


def _reason(exc: BaseException | None) -> str:
    """The parser's reason (llhttp's fixed texts), unless it quotes the client's bytes."""
    if isinstance(exc, HttpProcessingError):
        reason = exc.message.split(":\n", 1)[0].strip().rstrip(".")
        if reason and len(reason) <= 80 and reason.isprintable() and not any(c in reason for c in "'\"\\"):
            return reason
    return "it could not be parsed"


def raw_response(error: GatewayError) -> bytes:
    """A whole HTTP/1.1 response, for a connection closed right after it (there is no request).

        >>> raw_response(GatewayError(408, "request_timeout", "late")).split(b"\\r\\n")[0]
        b'HTTP/1.1 408 Request Timeout'
    """
    body = error.json()
    head = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}", "Content-Type: application/json",
            f"Content-Length: {len(body)}", "Connection: close"]
    if error.retry_after is not None:
        head.append(f"Retry-After: {max(1, round(error.retry_after))}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _fields(error: GatewayError, peer: Any) -> dict[str, Any]:
    host = peer[0] if isinstance(peer, tuple) else peer
    return {"peer": host, "status": error.status, "error_code": error.code, "error_message": error.message}


# --- one connection --------------------------------------------------------------------------

class EdgeHandler(RequestHandler):
    """aiohttp's protocol for one connection, with the read timeout and the OpenAI error shape."""

    __slots__ = ("_edge", "_limits", "_events", "_head_timer", "_body_timer", "_body")

    def __init__(self, manager: EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge, self._limits, self._events = manager, manager.limits, manager.events
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None  # the latest request's body while it is still arriving

    def waiting_idle(self) -> bool:
        """Between requests, with no byte of the next one yet."""
        return self._waiting() and self._head_timer is None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head()  # a new connection owes its first head within the read timeout

    def connection_lost(self, exc: BaseException | None) -> None:
        self._head_paid()
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body_timer, self._body = None, None
        super().connection_lost(exc)

    def evict(self, error: GatewayError) -> dict[str, Any]:
        """Make room at the cap: this connection owes its head and is closed with `error`."""
        self._head_paid()
        return self._close_with(error)

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self._waiting():
            self._arm_head()  # the first byte of the next request's head
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:  # a head arrived, or the parser gave up
            self._head_arrived()

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's error response (a request it could not parse, or an exception no middleware
        caught), in the OpenAI shape. A parse error is the client's: one throttled log line."""
        if isinstance(exc, HttpProcessingError):
            error = malformed(exc, self._limits)
            self._events("bad_http", **_fields(error, self.peername))
        else:  # a gateway bug past the app's middleware: the traceback is worth having
            self.log_exception("Error handling request", exc_info=exc)
            error = GatewayError(status, "internal_error", "The gateway failed to handle the request")
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        response = web.Response(status=error.status, body=error.json(), content_type="application/json")
        response.force_close()
        return response

    # --- the read timeout ---------------------------------------------------------------

    def _waiting(self) -> bool:
        """aiohttp's loop is waiting for the next request's head."""
        return self._waiter is not None and not self._waiter.done()

    def _arm_head(self) -> None:
        self._head_timer = self._loop.call_later(self._limits.read_timeout_s, self._head_late)
        self._edge.owes_head(self)

    def _head_paid(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._edge.paid(self)

    def _head_arrived(self) -> None:
        self._head_paid()
        message, payload = self._messages[-1]
        if isinstance(message, RawRequestMessage):
            if not payload.is_eof():
                self._expect_body(payload)
        elif self._body is not None and not self._body.is_eof() and self._request_in_progress:
            # The parser gave up inside a body: the request it belongs to fails (a 400, its own
            # log line) rather than waiting for bytes that will never be parsed.
            self._fail_body(self._body, GatewayError(400, "bad_http",
                                                     f"Malformed request body: {_reason(message.exc)}"))

    def _head_late(self) -> None:
        self._head_timer = None
        self._edge.paid(self)
        if self._waiting():
            self._events("read_timeout", **self._close_with(read_timeout("head", self._limits.read_timeout_s)))

    def _close_with(self, error: GatewayError) -> dict[str, Any]:
        """Answer `error` and close, between requests (no request object exists to answer with)."""
        fields = _fields(error, self.peername)
        if self.transport is not None:
            self.transport.write(raw_response(error))
        self.force_close()
        return fields

    def _expect_body(self, payload: StreamReader) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body = payload
        self._body_timer = self._loop.call_later(self._limits.read_timeout_s, self._body_late, payload)

    def _body_late(self, payload: StreamReader) -> None:
        self._body_timer = None
        # After its handler is done, aiohttp drains what is left (bounded by lingering_time): not ours.
        if not payload.is_eof() and self._request_in_progress:
            self._fail_body(payload, read_timeout("body", self._limits.read_timeout_s))

    def _fail_body(self, payload: StreamReader, error: GatewayError) -> None:
        payload.set_exception(error)  # the handler's read raises it: its request fails with it
        payload.feed_eof()  # nothing more is read for this body (no lingering on it)
        self.close()  # and the connection ends after this request's response


class _Refused(asyncio.Protocol):
    """A connection over the cap: one 503, then closed. It never reaches aiohttp."""

    def __init__(self, response: bytes, refused: Callable[[Any], None]) -> None:
        self._response, self._refused = response, refused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._refused(transport.get_extra_info("peername"))
        transport.write(self._response)
        transport.close()


class EdgeServer(Server):
    """aiohttp's connection factory, with the connection cap."""

    def __init__(self, handler: Any, *, limits: Limits, events: EdgeEvents, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits, self.events = limits, events
        self._owing: dict[EdgeHandler, None] = {}  # connections owing a request head, longest first
        self._refusal = too_many_connections(limits.max_connections)
        self._refusal_bytes = raw_response(self._refusal)

    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]  # a refusal is not a RequestHandler
        if len(self._connections) >= self.limits.max_connections:
            oldest = next(iter(self._owing), None)
            if oldest is None:
                return _Refused(self._refusal_bytes, self._refused)
            self.events("connection_cap", **oldest.evict(self._refusal))
        return EdgeHandler(self, loop=self._loop, **self._kwargs)

    def owes_head(self, handler: EdgeHandler) -> None:
        self._owing[handler] = None

    def paid(self, handler: EdgeHandler) -> None:
        self._owing.pop(handler, None)

    def _refused(self, peer: Any) -> None:
        self.events("connection_cap", **_fields(self._refusal, peer))

    def close_idle(self) -> int:
        """Close the connections that sit between requests (shutdown: they could only bring new
        work); busy ones close after their response. How many were closed."""
        idle = [h for h in self._connections if isinstance(h, EdgeHandler) and h.waiting_idle()]
        for handler in idle:
            handler.force_close()
        return len(idle)


class EdgeRunner(web.AppRunner):
    """aiohttp's AppRunner, serving through an EdgeServer held to `limits`."""

    def __init__(self, app: web.Application, limits: Limits, events: EdgeEvents, **kwargs: Any) -> None:
        # handler_cancellation: a client that goes away cancels its handler, which closes the
        # upstream request at once (see relay.py).
        super().__init__(app, handler_cancellation=True, access_log=None, keepalive_timeout=limits.keepalive_s,
                         max_headers=limits.max_header_count, max_line_size=limits.max_header_line_bytes,
                         max_field_size=limits.max_header_line_bytes, **kwargs)
        self._limits, self._events = limits, events

    @property
    def edge(self) -> EdgeServer:
        assert isinstance(self.server, EdgeServer)
        return self.server

    async def _make_server(self) -> Server:
        plain = await super()._make_server()  # starts the app; the same handler, served through the edge
        kwargs = {k: v for k, v in self._kwargs.items() if k != "handler_cancellation"}
        return EdgeServer(plain.request_handler, request_factory=plain.request_factory,
                          handler_cancellation=plain.handler_cancellation, loop=asyncio.get_running_loop(),
                          limits=self._limits, events=self._events, **kwargs)

    async def _cleanup_server(self) -> None:
        self._events.close()  # what is still counted is written before the app closes its log
        await super()._cleanup_server()


# --- the open-file limit -----------------------------------------------------------------------

OPEN_FILES_CEILING = 1 << 20  # the hard limit container runtimes give by default; fs.nr_open bounds it too


def raise_open_file_limit(ceiling: int = OPEN_FILES_CEILING) -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit, where the OS allows:
    (before, after). A process that may raise its hard limit too (CAP_SYS_RESOURCE, which root
    usually has, though not in every container) raises both, up to `ceiling` and the kernel's
    per-process maximum (/proc/sys/fs/nr_open): one worker's client connections and their
    upstream ones each take a file. Either way `after` is the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft, soft
    if hard != resource.RLIM_INFINITY:
        top = min(ceiling, _kernel_open_files_max(hard))
        if top > hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (top, top))
                return soft, top
            except (ValueError, OSError):  # unprivileged: the hard limit stays
                pass
    target = hard if hard != resource.RLIM_INFINITY else max(soft, ceiling)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
    return soft, max(soft, target)


def _kernel_open_files_max(fallback: int) -> int:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return fallback


def connection_cap(configured: int, fd_limit: int, upstream_fds: int) -> int:
    """The most client connections that fit under the open-file limit beside the upstream pools,
    the accept burst and the process's own files (a cap above it would fail as EMFILE first).

        >>> connection_cap(10_000, 20_000, 400), connection_cap(10_000, 1024, 400)
        (10000, 304)
    """
    if fd_limit == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, fd_limit - upstream_fds - ACCEPT_BURST - RESERVED_FDS))
