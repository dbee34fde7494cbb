"""The relay's I/O: open an upstream (with retries and fallback), commit, pump.

    OPEN    the plan's targets in order, each with its retries, until one answers
            200 and sends its first content event. Nothing has reached the
            client yet, so every failure here can still be retried.
    COMMIT  the status and headers, then the events held while opening.
    PUMP    read a chunk, feed it to the stream, write what it gives back,
            before the next read. After the first byte nothing is retried: a
            failure ends the stream with an explicit error event.

Every decision (what a chunk means for the client, which deadline fired,
whether an upstream answer may be retried, how long to back off) is made by
`stream_core.py`, which does no I/O. Here we only read, feed, write and wait.
The record (`record.py`) owns what is logged; the caller finishes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
import orjson
from aiohttp import web

from . import errors
from .config import Provider, Target
from .errors import GatewayError
from .hedge import Hedger
from .inflight import Ticket
from .providers import ChatRequest, Completion, UpstreamRequest, dialect_for
from .read_timer import ReadTimer
from .record import RequestRecord
from .renderers import Renderer
from .routing import Plan
from .stream_core import (
    AttemptFailed,
    Batch,
    Deadlines,
    UpstreamStream,
    backoff_delay,
    classify_status,
    not_an_event_stream,
    opening_timeout,
    oversized_answer,
    unreachable,
)
from .upstreams import Lease, PoolExhausted, Upstreams, forwarded_headers

T = TypeVar("T")
MAX_ERROR_BODY = 64 * 1024
STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each write through at once
}


class ClientDisconnected(Exception):
    """A write found the client gone (before aiohttp cancelled the handler)."""


@dataclass(slots=True)
class Dispatch:
    """One client request on its way to the providers of its plan."""

    upstreams: Upstreams
    record: RequestRecord
    chat: ChatRequest
    plan: Plan
    deadline: float  # the loop's clock: one deadline from arrival, so retries never stack past it
    heartbeat_s: float
    forward: Mapping[str, str]  # the client's headers, for providers that pass some on (upstreams.py)
    max_event_bytes: int  # an upstream SSE event (or whole non-streamed answer) past this is a failure
    ticket: Ticket = field(default_factory=Ticket)  # in flight (inflight.py): the shutdown may cut it
    hedger: Hedger | None = None  # the route hedges slow first tokens (hedge.py)

    def provider(self, target: Target) -> Provider:
        return self.upstreams.providers[target.provider]

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()


@dataclass(frozen=True, slots=True)
class OpenStream:
    lease: Lease
    stream: UpstreamStream


# --- the two kinds of response ----------------------------------------------------

async def stream_response(d: Dispatch, request: web.Request, renderer: Renderer,
                          headers: Mapping[str, str]) -> web.StreamResponse:
    opened = await open_stream(d, renderer)
    d.record.served_by(opened.stream)
    # Cut by the shutdown from here on: the upstream is closed, so the pump wakes and ends the stream.
    d.ticket.on_cut(lambda: opened.lease.end(close=True))
    try:
        return await relay_stream(d, request, opened, headers)
    finally:
        d.ticket.on_cut(None)
        opened.lease.end()  # back to the pool if fully read, closed otherwise


async def unary_response(d: Dispatch, headers: Mapping[str, str]) -> web.Response:
    completion = await open_unary(d)
    d.record.served_by(completion)
    d.record.committed()
    d.record.wrote(len(completion.body), 0, 1, time.monotonic())
    return web.Response(body=completion.body, content_type="application/json", headers=headers)


# --- OPEN -------------------------------------------------------------------------

Attempt = Callable[[Target, UpstreamRequest, int], Awaitable[T]]


async def _with_retries(d: Dispatch, attempt: Attempt[T], stream: bool, first: int = 0,
                        stop: int | None = None, hedge: bool = False) -> tuple[T, int]:
    """Run `attempt` on each target in turn (the plan's `first` to `stop`), retrying retryable
    failures with backoff; returns its result and its index in the record's attempts. Raises
    `AttemptFailed`: retryable when every target failed so, so a caller may still try others."""
    last: AttemptFailed | None = None
    for index in range(first, len(d.plan.targets) if stop is None else stop):
        target = d.plan.targets[index]
        provider = d.provider(target)
        request = dialect_for(provider.dialect).build_request(provider, target.model, d.chat, stream)
        request.headers.update(forwarded_headers(d.forward, provider.forward_headers))
        for n in range(provider.retry.attempts):
            if d.remaining() <= 0:
                raise AttemptFailed(errors.timeout("total", d.plan.total_s), retryable=False)
            number = d.record.attempt_started(target, fallback=index > 0, hedge=hedge)
            try:
                return await attempt(target, request, number), number
            except AttemptFailed as failed:
                last = failed
                d.record.attempt_failed(number, failed.error.code)
                if not failed.retryable:
                    raise
            if n + 1 < provider.retry.attempts:
                delay = backoff_delay(n, provider.retry.backoff_base_ms, provider.retry.backoff_cap_ms,
                                      last.retry_after)
                if delay >= d.remaining():
                    break  # a retry here cannot fit in the deadline; the fallback needs no wait
                await asyncio.sleep(delay)
    assert last is not None
    raise last


async def _sequential(d: Dispatch, attempt: Attempt[T], stream: bool, first: int = 0) -> T:
    """The plan's targets (from `first`) one after another: a failure moves on at once."""
    try:
        result, number = await _with_retries(d, attempt, stream, first)
    except AttemptFailed as failed:
        raise failed.error from None
    d.record.attempt_won(number)
    return result


async def _hedged(d: Dispatch, hedger: Hedger, attempt: Attempt[OpenStream]) -> OpenStream:
    """The arm's own provider first; if it has no first content event `hedger.delay_s` after the
    request began (and the budget allows), the rest of the chain races it. The first to open wins;
    the other is cancelled, its connection closed unread. A failure is not slowness: it moves on
    to the rest of the chain at once, as without hedging."""
    loop = asyncio.get_running_loop()
    arm = d.plan.arm.name
    primary = asyncio.create_task(_with_retries(d, attempt, True, 0, 1))
    racers = {primary}
    try:
        wait_s = hedger.delay_s(arm) - (loop.time() - d.record.started)
        done, _ = await asyncio.wait(racers, timeout=max(0.0, wait_s))
        if not done:
            if hedger.spend(loop.time()):
                d.record.hedge_started()
                racers.add(asyncio.create_task(_with_retries(d, attempt, True, 1, None, hedge=True)))
            else:
                d.record.hedge_denied = True
        last: AttemptFailed | None = None
        while racers:
            done, _ = await asyncio.wait(racers, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: t is not primary):  # the arm's own first on a tie
                racers.discard(task)
                try:
                    opened, number = task.result()
                except AttemptFailed as failed:
                    if not failed.retryable:
                        raise failed.error from None
                    last = failed
                    continue
                d.record.attempt_won(number)
                if task is primary:
                    hedger.observe(arm, d.record.attempts_detail[number]["ttft_ms"])
                return opened
        if not d.record.hedged and last is not None:
            # The arm's provider failed before a hedge was due: the rest of the chain, as ever.
            return await _sequential(d, attempt, True, first=1)
        assert last is not None
        raise last.error
    finally:
        for task in racers:
            _discard(d, task)
        for number, detail in enumerate(d.record.attempts_detail):
            if detail["result"] == "open":
                elapsed = d.record.attempt_lost(number)
                if not detail["hedge"] and detail["provider"] == d.plan.arm.provider:
                    # The arm was slower than this at least: its p95 must not learn from the fast ones only.
                    hedger.observe(arm, elapsed)


def _discard(d: Dispatch, task: asyncio.Task[tuple[OpenStream, int]]) -> None:
    """The race's loser: cancelled, so its attempt closes its own connection; should it have opened
    in the same instant as the winner, its connection is closed here. Never pooled half-read. No
    await: a cancellation of the request itself must not be taken for the loser's."""
    task.cancel()

    def close_if_opened(done: asyncio.Task[tuple[OpenStream, int]]) -> None:
        if not done.cancelled() and done.exception() is None:
            opened, number = done.result()
            opened.lease.end(close=True)
            d.record.attempt_lost(number)

    task.add_done_callback(close_if_opened)


async def _post(d: Dispatch, target: Target, request: UpstreamRequest) -> Lease:
    """Take a pool slot, send the request and wait for the status line; a non-200 answer is a
    classified failure."""
    provider = d.provider(target)
    try:
        slot = await d.upstreams.slot(target.provider, provider.timeouts.pool_s)
    except PoolExhausted:
        raise AttemptFailed(GatewayError(503, "pool_exhausted", f"All {provider.max_connections} connections to "
                                         f"provider {target.provider} stayed busy for {provider.timeouts.pool_s:g}s",
                                         outcome="unavailable", retry_after=1.0), retryable=True) from None
    timeout = aiohttp.ClientTimeout(total=None, connect=provider.timeouts.connect_s,
                                    sock_connect=provider.timeouts.connect_s)
    try:
        response = await d.upstreams.sessions[target.provider].post(
            request.url, data=request.body, headers=request.headers, timeout=timeout, allow_redirects=False)
    except aiohttp.ConnectionTimeoutError:
        slot.release()
        raise AttemptFailed(errors.timeout("connect", provider.timeouts.connect_s), retryable=True) from None
    except aiohttp.ClientError as exc:
        slot.release()
        raise unreachable(target.provider, exc) from None
    except BaseException:
        slot.release()
        raise
    d.record.upstream_answered()
    if response.status == 200:
        return d.upstreams.lease(target.provider, response, slot)
    try:
        body = await response.content.read(MAX_ERROR_BODY)
    except aiohttp.ClientError:
        body = b""
    finally:
        response.release()
        slot.release()
    raise classify_status(target.provider, response.status, body, response.headers.get("Retry-After"))


async def open_stream(d: Dispatch, renderer: Renderer) -> OpenStream:
    loop = asyncio.get_running_loop()

    async def attempt(target: Target, request: UpstreamRequest, number: int) -> OpenStream:
        timeouts = d.provider(target).timeouts
        lease: Lease | None = None
        try:
            try:
                wait_until = min(loop.time() + timeouts.first_token_s, d.deadline)
                async with asyncio.timeout_at(wait_until):
                    lease = await _post(d, target, request)
                    if refused := not_an_event_stream(target.provider, lease.response.headers.get("Content-Type")):
                        raise refused
                    stream = UpstreamStream(
                        target.provider,
                        dialect_for(d.provider(target).dialect).stream_translator(target.model, d.chat.dialect),
                        renderer, Deadlines(loop.time(), idle_s=timeouts.idle_s, heartbeat_s=d.heartbeat_s,
                                            total_at=d.deadline, total_s=d.plan.total_s),
                        max_event_bytes=d.max_event_bytes)
                    while not stream.feed_opening(await _read(lease, d.record)):
                        pass
                    d.record.attempt_opened(number)
                    return OpenStream(lease, stream)
            except TimeoutError:
                raise opening_timeout(wait_until, d.deadline, d.plan.total_s, timeouts.first_token_s) from None
            except aiohttp.ClientError as exc:
                raise AttemptFailed(GatewayError(502, "upstream_error", f"Provider {target.provider} broke "
                                                 f"the stream: {type(exc).__name__}"), retryable=True) from None
        except BaseException:
            if lease is not None:  # whatever went wrong, this attempt's connection is done
                lease.end(close=True)
            raise

    if d.hedger is not None and len(d.plan.targets) > 1:
        return await _hedged(d, d.hedger, attempt)
    return await _sequential(d, attempt, True)


async def _read(lease: Lease, record: RequestRecord) -> bytes:
    chunk = await lease.response.content.readany()
    record.upstream_first_byte()
    return chunk


async def open_unary(d: Dispatch) -> Completion:
    loop = asyncio.get_running_loop()

    async def attempt(target: Target, request: UpstreamRequest, number: int) -> Completion:
        timeouts = d.provider(target).timeouts
        lease: Lease | None = None
        try:
            # The status line within the first-token window, as a stream's first event: a provider
            # that stalls is left for the next in time. The body then has the rest of the deadline.
            wait_until = min(loop.time() + timeouts.first_token_s, d.deadline)
            try:
                async with asyncio.timeout_at(wait_until):
                    lease = await _post(d, target, request)
            except TimeoutError:
                raise opening_timeout(wait_until, d.deadline, d.plan.total_s, timeouts.first_token_s) from None
            try:
                async with asyncio.timeout_at(d.deadline):
                    body = await _read_body(lease, d.max_event_bytes, target.provider)
            except TimeoutError:
                raise errors.timeout("total", d.plan.total_s) from None
        except aiohttp.ClientError as exc:
            raise AttemptFailed(GatewayError(502, "upstream_error", f"Provider {target.provider} broke the "
                                             f"response: {type(exc).__name__}"), retryable=True) from None
        finally:
            if lease is not None:
                lease.end()
        try:
            completion = dialect_for(d.provider(target).dialect).parse_completion(body, target.model, d.chat.dialect)
        except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
            raise AttemptFailed(GatewayError(502, "upstream_error",
                                             f"Provider {target.provider} sent a malformed response"),
                                retryable=True) from None
        d.record.attempt_opened(number)  # a non-streamed answer: its whole body is its first token
        return completion

    return await _sequential(d, attempt, False)


async def _read_body(lease: Lease, limit: int, provider: str) -> bytes:
    """A whole non-streamed answer, unless it grows past `limit`: memory stays bounded."""
    body = bytearray()
    async for chunk in lease.response.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise oversized_answer(provider, limit)
    return bytes(body)


# --- COMMIT and PUMP --------------------------------------------------------------

async def relay_stream(d: Dispatch, request: web.Request, opened: OpenStream,
                       headers: Mapping[str, str]) -> web.StreamResponse:
    """Commit, then pump into the client's response until the stream ends."""
    response = web.StreamResponse(status=200, headers={**STREAM_HEADERS, **headers})
    await response.prepare(request)
    d.record.committed()

    async def write(batch: Batch, overhead_s: float) -> None:
        await _send(response, d.record, batch, overhead_s)

    try:
        await pump(d, opened, write)
        await response.write_eof()
    except (ClientDisconnected, ConnectionResetError):  # write_eof finds a vanished client this way
        d.record.disconnected()
    return response


# Where a committed stream's batches go: the client's response, or a resumable stream's event log
# (resumable.py). It may refuse a batch with an error (not written), which ends the stream.
Writer = Callable[[Batch, float], Awaitable[GatewayError | None]]


async def pump(d: Dispatch, opened: OpenStream, write: Writer) -> None:
    """From the held events to the stream's last event; an upstream failure becomes its error event."""
    record, stream, upstream = d.record, opened.stream, opened.lease.response.content
    loop = asyncio.get_running_loop()
    timer = ReadTimer(stream.wake_at)  # one for the stream, not one per read
    began = time.perf_counter()
    batch = stream.commit(loop.time())
    try:
        while True:
            refused = await write(batch, time.perf_counter() - began)
            if refused is not None:
                batch = Batch(error=refused)
                break
            if batch.ended:
                break
            try:
                chunk = await next_chunk(timer, upstream)
            except aiohttp.ClientError as exc:
                began = time.perf_counter()
                batch = stream.shut_down() if d.ticket.cut else stream.broken(type(exc).__name__)
            else:
                began = time.perf_counter()
                if chunk is None:
                    batch = stream.timer_fired(loop.time())
                elif d.ticket.cut and not chunk:
                    # A connection the shutdown closed may read as a clean end of body: it is the cut, not
                    # a truncation by the provider.
                    batch = stream.shut_down()
                else:
                    batch = stream.feed(chunk, loop.time())
    finally:
        timer.close()
    if batch.error is not None:
        ending = stream.renderer.error(record.failed(batch.error))
    else:
        ending = stream.renderer.closing(stream.tokens()[0], ttft_ms=record.ttft_ms,
                                         latency_ms=record.since_start_ms())
    await write(Batch(ending, events=1 if ending else 0, parts=(ending,) if ending else ()), 0.0)


async def next_chunk(timer: ReadTimer, upstream: aiohttp.StreamReader) -> bytes | None:
    """The upstream's next chunk (b"" at the end of the body), or None when the stream's deadline
    came first. Bytes already received win over an overdue deadline: a slow write to the client,
    not the upstream, made this read late."""
    try:
        return await timer.wait(upstream.readany)
    except TimeoutError:
        chunk = upstream.read_nowait()
        return chunk if chunk or upstream.is_eof() else None


async def _send(response: web.StreamResponse, record: RequestRecord, batch: Batch, overhead_s: float) -> None:
    if batch.data:
        try:
            await response.write(batch.data)  # waits for the transport to drain: backpressure
        except ConnectionResetError:  # aiohttp's ClientConnectionResetError is one too
            raise ClientDisconnected() from None
    record.wrote(len(batch.data), batch.events, batch.outputs, time.monotonic(), overhead_s)
