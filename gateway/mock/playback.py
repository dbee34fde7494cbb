"""Plays a Job out to the client, streamed or whole, paced and cut by its fault, noticing the client going away."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

import orjson
from aiohttp import web

from .dialects import Dialect, Job
from .faults import Fault
from .state import STATE

# Short enough that `ended` lands within a few ms of the peer closing. Polling the
# transport works however the app is hosted (aiohttp_client in tests), unlike
# handler_cancellation, which is a runner setting the app cannot enforce: where the
# runner has it (start_mock, the CLI), nothing polls (see sleep_or_stop).
_POLL_S: Final = 0.005
STALL_S: Final = 3600.0
# What a broken proxy or server puts where the stream should be: no SSE field
# in it (the lines have no `data:`), so a WHATWG parser would skip it silently.
_GARBAGE: Final = b"<html><head><title>502 Bad Gateway</title></head>\n<body>upstream hiccup</body></html>\n"
_ENDLESS_PIECE: Final = b"x" * 65536


class Stop(Exception):
    """Ends a handler early: the peer went away or the server is shutting down."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def sleep_or_stop(request: web.Request, seconds: float) -> None:
    """Sleep, but raise Stop as soon as the client closes or the app shuts down. Where the host
    cancels the handler of a client that goes away (`start_mock`), only the shutdown is waited on;
    elsewhere (`aiohttp_client` in tests) the transport is polled every `_POLL_S`."""
    state = request.app[STATE]
    if state.cancels_handlers:
        if client_gone(request):
            raise Stop("client_closed")
        shutdown = state.shutdown()
        if seconds > 0 and not shutdown.done():
            await asyncio.wait((shutdown,), timeout=seconds)
        if shutdown.done():
            raise Stop("server_shutdown")
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        if client_gone(request):
            raise Stop("client_closed")
        if state.closing:
            raise Stop("server_shutdown")
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        await asyncio.sleep(min(remaining, _POLL_S))


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    body = orjson.dumps(data)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def error_response(dialect: Dialect, status: int, message: str, retry_after: str | None = None) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    return json_response(dialect.error_body(status, message), status, headers)


class _Out:
    """Writes stream bytes, optionally in K-byte pieces so events (and UTF-8
    characters) arrive split across TCP segments."""

    __slots__ = ("_resp", "_chunk", "_record")

    def __init__(self, resp: web.StreamResponse, chunk_bytes: int, record: dict[str, Any]) -> None:
        self._resp = resp
        self._chunk = chunk_bytes
        self._record = record

    async def send(self, data: bytes) -> None:
        try:
            if not self._chunk:
                await self._resp.write(data)
            else:
                for start in range(0, len(data), self._chunk):
                    await self._resp.write(data[start : start + self._chunk])
                    # Yield so each piece leaves in its own send() instead of the
                    # loop coalescing them (TCP_NODELAY is on for aiohttp sockets).
                    await asyncio.sleep(0)
        except ConnectionError as exc:
            raise Stop("client_closed") from exc
        self._record["bytes_sent"] += len(data)


async def _flush(request: web.Request) -> None:
    """Wait until written bytes left the transport, so an abort drops the
    connection after the tokens rather than discarding them."""
    transport = request.transport
    while transport is not None and not transport.is_closing() and transport.get_write_buffer_size():
        await asyncio.sleep(_POLL_S)


async def stream_job(
    request: web.Request,
    dialect: Dialect,
    job: Job,
    fault: Fault,
    delays: tuple[float, float],
    chunk_bytes: int,
    record: dict[str, Any],
) -> web.StreamResponse:
    content_type = fault.content_type or "text/event-stream"
    resp = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
    await resp.prepare(request)  # a StreamResponse sends its headers right away
    record["status"] = 200
    try:
        await _emit(request, _Out(resp, chunk_bytes, record), dialect, job, fault, delays, record)
    except Stop as stop:
        record["outcome"] = stop.outcome
    # aiohttp ends the chunked body after the handler: cleanly for a finished
    # or truncated stream, and quietly not at all on a closed connection.
    return resp


async def _emit(
    request: web.Request,
    out: _Out,
    dialect: Dialect,
    job: Job,
    fault: Fault,
    delays: tuple[float, float],
    record: dict[str, Any],
) -> None:
    first_s, inter_s = delays
    # A cut after N >= tokens still fires, before the finish events: "drop
    # before [DONE]" is a case worth testing.
    stop_at = min(fault.cut_after, job.tokens) if fault.cut else job.tokens
    for i in range(stop_at):
        await sleep_or_stop(request, first_s if i == 0 else inter_s)
        # The preamble rides with the first token, so a fault after 0 tokens
        # means nothing but headers reached the client (the gateway may retry).
        await out.send(dialect.preamble(job) + dialect.token(job, i) if i == 0 else dialect.token(job, i))
        record["tokens_sent"] = i + 1
    if stop_at == 0:
        await sleep_or_stop(request, first_s)

    if fault.cut is None:
        await out.send((dialect.preamble(job) if job.tokens == 0 else b"") + dialect.finish(job))
        record["outcome"] = "completed"
    elif fault.cut == "drop":
        await _flush(request)
        record["outcome"] = "dropped"
        if request.transport is not None:
            # Closing without the chunked terminator: the client sees an
            # incomplete payload. asyncio closes the socket (FIN, not RST),
            # so the tokens already sent stay readable.
            request.transport.abort()
    elif fault.cut == "truncate":
        record["outcome"] = "truncated"
    elif fault.cut == "error":
        await out.send(dialect.error_event(job))
        record["outcome"] = "error_event"
    elif fault.cut == "garbage":
        await out.send(_GARBAGE.replace(b"\n", job.eol))  # then the body ends
        record["outcome"] = "garbage"
    elif fault.cut == "bad_json":
        await out.send(b'data: {"choices": [' + job.eol + job.eol)  # then the body ends
        record["outcome"] = "bad_json"
    elif fault.cut == "endless":
        await _endless_line(request, out, fault.endless_bytes)
        record["outcome"] = "endless"
    else:
        record["outcome"] = "stalled"
        await sleep_or_stop(request, STALL_S)


async def _endless_line(request: web.Request, out: _Out, total: int) -> None:
    """`data: ` and `total` more bytes with no line ending, as fast as the reader takes them
    (each write waits for the transport to drain), until the reader leaves."""
    await out.send(b"data: ")
    sent = 0
    while sent < total:
        await sleep_or_stop(request, 0)  # the reader left, or the app is closing
        piece = _ENDLESS_PIECE[: total - sent]
        await out.send(piece)
        sent += len(piece)


async def complete_job(
    request: web.Request,
    dialect: Dialect,
    job: Job,
    fault: Fault,
    delays: tuple[float, float],
    record: dict[str, Any],
) -> web.StreamResponse:
    """Non-streaming: wait as long as generating the tokens would take, then
    answer. Cuts have no stream to cut: drop/truncate close the connection
    with no response, error answers with the dialect's error status, any
    stall never sends headers, garbage/bad_json answer 200 with a body that is
    not JSON, and endless answers 200 with `endless_bytes` of it."""
    first_s, inter_s = delays
    n = min(fault.cut_after, job.tokens) if fault.cut else job.tokens
    await sleep_or_stop(request, first_s + inter_s * max(n - 1, 0))
    if fault.cut is None:
        record["outcome"], record["status"] = "completed", 200
        record["tokens_sent"] = job.tokens
        return json_response(dialect.full(job))
    if fault.cut in ("drop", "truncate"):
        record["outcome"] = "dropped" if fault.cut == "drop" else "truncated"
        if request.transport is not None:
            request.transport.abort()
        return web.Response()  # never sent: the transport is gone
    if fault.cut == "error":
        status = dialect.stream_error_status()
        record["outcome"], record["status"] = "status", status
        return error_response(dialect, status, "Overloaded" if status == 529 else "The server had an error")
    if fault.cut in ("garbage", "bad_json"):
        record["outcome"], record["status"] = fault.cut, 200
        return web.Response(body=_GARBAGE, content_type="application/json")
    if fault.cut == "endless":
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        record["status"] = 200
        try:
            await _endless_line(request, _Out(resp, 0, record), fault.endless_bytes)
        except Stop as stop:
            record["outcome"] = stop.outcome
        else:
            record["outcome"] = "endless"
        return resp
    record["outcome"] = "stalled"
    await sleep_or_stop(request, STALL_S)
    return web.Response(status=504)
