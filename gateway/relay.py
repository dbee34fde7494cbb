"""The streaming core: open an upstream, commit, pump events, finish.

    OPEN    try the arm's provider, then the fallback chain, with retries and
            backoff, until one answers 200 and sends its first content event.
            Nothing has reached the client yet, so every failure here can
            still be retried.
    COMMIT  send the status and headers, then the events held while opening.
    PUMP    each upstream chunk -> parser -> every complete event written at
            once. After the first byte, nothing is retried: a failure ends the
            stream with an explicit error event.
    FINISH  the caller logs the record once.

The relay owns timing (connect, first token, idle, total deadline,
heartbeats); dialects own meaning; the record owns what is logged.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson
from aiohttp import web

from . import errors
from .config import Config, Provider, Target
from .errors import GatewayError
from .providers import Completion, Piece, StreamTranslator, UpstreamRequest, dialect_for, error_message
from .record import RequestRecord
from .sse import SSEError, SSEParser, encode_comment, encode_event

T = TypeVar("T")
MAX_ERROR_BODY = 64 * 1024
KEEP_ALIVE = encode_comment("keep-alive")


class ClientDisconnected(Exception):
    """The client went away while we were writing to it (handled inside relay_stream)."""


class _AttemptFailed(Exception):
    def __init__(self, error: GatewayError, *, retryable: bool, retry_after: float | None = None) -> None:
        self.error, self.retryable, self.retry_after = error, retryable, retry_after


@dataclass(slots=True)
class Call:
    """One client request on its way through the relay."""

    config: Config
    sessions: dict[str, aiohttp.ClientSession]
    record: RequestRecord
    chat: dict[str, Any]
    targets: list[Target]
    forward: dict[str, str] = field(default_factory=dict)  # client headers passed upstream, lower-case
    deadline: float = 0.0  # loop time
    in_use: Any = None  # a gauge of upstream connections held, by provider (metrics.py)
    scrub: Callable[[str], str] = str  # removes secrets from text bound for the client

    def provider(self, target: Target) -> Provider:
        return self.config.providers[target.provider]

    def hold(self, target: Target) -> None:
        if self.in_use is not None:
            self.in_use.labels(target.provider).inc()

    def let_go(self, target: Target, response: aiohttp.ClientResponse, *, close: bool = False) -> None:
        """End an upstream response once. Release returns a fully read connection to the pool
        and closes any other: a half-read connection is never reused."""
        response.close() if close else response.release()
        if self.in_use is not None:
            self.in_use.labels(target.provider).dec()

    def remaining(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()


# --- OPEN --------------------------------------------------------------------

async def _with_retries(call: Call, attempt: Callable[[Target, UpstreamRequest], Awaitable[T]],
                        stream: bool) -> T:
    """Run `attempt` on each target in turn, retrying retryable failures with backoff."""
    last: _AttemptFailed | None = None
    for index, target in enumerate(call.targets):
        provider = call.provider(target)
        request = dialect_for(provider.dialect).build_request(provider, target.model, call.chat, stream)
        if provider.forward_headers:
            request.headers.update({k: v for k, v in call.forward.items() if k.startswith(provider.forward_headers)})
        for n in range(provider.retry.attempts):
            if call.remaining() <= 0:
                raise errors.timeout("total", _total_s(call))
            call.record.attempts += 1
            call.record.provider, call.record.upstream_model = target.provider, target.model
            call.record.fallback_used = index > 0
            try:
                return await attempt(target, request)
            except _AttemptFailed as failed:
                last = failed
                call.record.attempt_errors.append(f"{target.provider}:{failed.error.code}")
                if not failed.retryable:
                    raise failed.error from None
            if n + 1 < provider.retry.attempts:
                delay = _backoff_delay(provider, n, last.retry_after)
                if delay >= call.remaining():
                    break  # a retry here cannot fit in the deadline; the fallback needs no wait
                await asyncio.sleep(delay)
    assert last is not None
    raise last.error


def _backoff_delay(provider: Provider, n: int, retry_after: float | None) -> float:
    # Full jitter (AWS architecture blog): spreads the retries of many clients apart.
    cap = provider.retry.backoff_cap_ms / 1000
    delay = random.uniform(0, min(cap, provider.retry.backoff_base_ms / 1000 * 2 ** n))
    if retry_after is not None:
        delay = min(cap, max(delay, retry_after))
    return delay


async def _post(call: Call, target: Target, request: UpstreamRequest) -> aiohttp.ClientResponse:
    """Send the request and wait for the status line; classify a failure for retry."""
    provider = call.provider(target)
    session = call.sessions[target.provider]
    timeout = aiohttp.ClientTimeout(total=None, connect=provider.timeouts.connect_s,
                                    sock_connect=provider.timeouts.connect_s)
    try:
        response = await session.post(request.url, data=request.body, headers=request.headers,
                                      timeout=timeout, allow_redirects=False)
    except aiohttp.ConnectionTimeoutError:
        raise _AttemptFailed(errors.timeout("connect", provider.timeouts.connect_s), retryable=True) from None
    except aiohttp.ClientError as exc:
        raise _AttemptFailed(GatewayError(502, "upstream_unreachable",
                                          f"Could not reach provider {target.provider}: {type(exc).__name__}"),
                             retryable=True) from None
    call.record.upstream_connect_ms = call.record.since_start_ms()
    call.record.ttfb_ms = None
    if response.status == 200:
        call.hold(target)
        return response
    try:
        body = await response.content.read(MAX_ERROR_BODY)
    except aiohttp.ClientError:
        body = b""
    finally:
        response.release()
    raise _upstream_status_error(target, response.status, body, response.headers.get("Retry-After"))


def _upstream_status_error(target: Target, status: int, body: bytes, retry_after: str | None) -> _AttemptFailed:
    message = f"Provider {target.provider} answered {status}: {error_message(body)}"
    wait = _parse_retry_after(retry_after)
    if status == 429:
        return _AttemptFailed(GatewayError(429, "upstream_rate_limited", message, outcome="upstream_error",
                                           retry_after=wait), retryable=True, retry_after=wait)
    if status >= 500:
        return _AttemptFailed(GatewayError(502, "upstream_error", message), retryable=True, retry_after=wait)
    if status in (401, 403):
        # The gateway's provider key was refused: not something the client can fix.
        return _AttemptFailed(GatewayError(502, "upstream_auth_failed", message, outcome="upstream_error"),
                              retryable=False)
    return _AttemptFailed(GatewayError(status if 400 <= status < 500 else 502, "upstream_rejected", message),
                          retryable=False)


def _parse_retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from LLM APIs; the jittered backoff applies


@dataclass(slots=True)
class OpenStream:
    target: Target
    response: aiohttp.ClientResponse
    parser: SSEParser
    translator: StreamTranslator
    held: list[Piece]  # pieces read while opening, written at commit
    done: bool = False


async def open_stream(call: Call) -> OpenStream:
    async def attempt(target: Target, request: UpstreamRequest) -> OpenStream:
        provider = call.provider(target)
        loop = asyncio.get_running_loop()
        first_token_at = loop.time() + provider.timeouts.first_token_s
        response: aiohttp.ClientResponse | None = None
        try:
            try:
                async with asyncio.timeout_at(min(first_token_at, call.deadline)):
                    response = await _post(call, target, request)
                    return await _until_first_content(call, target, response)
            except TimeoutError:
                if loop.time() >= call.deadline:
                    raise errors.timeout("total", _total_s(call)) from None
                raise _AttemptFailed(errors.timeout("first_token", provider.timeouts.first_token_s),
                                     retryable=True) from None
            except (aiohttp.ClientError, SSEError) as exc:
                raise _AttemptFailed(GatewayError(502, "upstream_error", f"Provider {target.provider} broke "
                                                  f"the stream: {type(exc).__name__}"), retryable=True) from None
        except BaseException:
            if response is not None:  # whatever went wrong, this attempt's connection is done
                call.let_go(target, response, close=True)
            raise

    return await _with_retries(call, attempt, stream=True)


async def _until_first_content(call: Call, target: Target, response: aiohttp.ClientResponse) -> OpenStream:
    """Read and hold events until the first content (or the terminator): until then, a retry is invisible."""
    opened = OpenStream(target, response, SSEParser(),
                        dialect_for(call.provider(target).dialect).stream_translator(target.model), [])
    while True:
        chunk = await response.content.readany()
        if call.record.ttfb_ms is None:
            call.record.ttfb_ms = call.record.since_start_ms()
        if not chunk:
            raise _AttemptFailed(GatewayError(502, "upstream_error", f"Provider {target.provider} ended the "
                                              "stream before the first token"), retryable=True)
        for event in opened.parser.feed(chunk):
            for piece in opened.translator.translate(event):
                if piece.error:
                    raise _AttemptFailed(GatewayError(502, "upstream_error", piece.error), retryable=True)
                opened.held.append(piece)
                opened.done = opened.done or piece.done
        if opened.done or any(p.output for p in opened.held):
            return opened


async def open_unary(call: Call) -> Completion:
    async def attempt(target: Target, request: UpstreamRequest) -> Completion:
        provider = call.provider(target)
        response: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout_at(call.deadline):
                response = await _post(call, target, request)
                body = await response.read()
        except TimeoutError:
            raise errors.timeout("total", _total_s(call)) from None
        except aiohttp.ClientError as exc:
            raise _AttemptFailed(GatewayError(502, "upstream_error",
                                              f"Provider {target.provider} broke the response: "
                                              f"{type(exc).__name__}"), retryable=True) from None
        finally:
            if response is not None:
                call.let_go(target, response)
        try:
            return dialect_for(provider.dialect).parse_completion(body, target.model)
        except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
            raise _AttemptFailed(GatewayError(502, "upstream_error",
                                              f"Provider {target.provider} sent a malformed response"),
                                 retryable=True) from None

    return await _with_retries(call, attempt, stream=False)


def _total_s(call: Call) -> float:
    return call.provider(call.targets[0]).timeouts.total_s


# --- COMMIT and PUMP ---------------------------------------------------------

class StreamWriter(Protocol):
    """How one endpoint renders pieces for its clients."""

    def render(self, piece: Piece) -> bytes | None: ...
    def error(self, error: GatewayError) -> bytes: ...
    def closing(self, record: RequestRecord) -> bytes: ...


class ChatCompletionsWriter:
    """OpenAI chat.completion.chunk events, raw from an OpenAI-dialect upstream."""

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage

    def render(self, piece: Piece) -> bytes | None:
        if piece.usage_only and not self.include_usage:
            return None
        return piece.out

    def error(self, error: GatewayError) -> bytes:
        return encode_event(error.json())

    def closing(self, record: RequestRecord) -> bytes:
        return b""  # [DONE] comes from the upstream's own terminator


class TokenStreamWriter:
    """The browser stream: `data: {"token": ...}` events, then `event: done`."""

    def render(self, piece: Piece) -> bytes | None:
        return encode_event(orjson.dumps({"token": piece.text})) if piece.text else None

    def error(self, error: GatewayError) -> bytes:
        return encode_event(error.json(), event="error")

    def closing(self, record: RequestRecord) -> bytes:
        return encode_event(orjson.dumps({
            "usage": {"prompt_tokens": record.prompt_tokens, "completion_tokens": record.completion_tokens},
            "ttft_ms": record.ttft_ms, "latency_ms": record.since_start_ms(),
        }), event="done")


STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each write through at once
}


async def relay_stream(call: Call, request: web.Request, opened: OpenStream, writer: StreamWriter,
                       headers: Mapping[str, str]) -> web.StreamResponse:
    """COMMIT and PUMP. Returns the prepared response; failures become error events."""
    record = call.record
    provider = call.provider(opened.target)
    response = web.StreamResponse(status=200, headers={**STREAM_HEADERS, **headers})
    await response.prepare(request)
    record.status = 200
    loop = asyncio.get_running_loop()
    heartbeat_s = call.config.server.heartbeat_s

    async def write(data: bytes, events: int) -> None:
        if data:
            try:
                await response.write(data)
            except ConnectionResetError:  # aiohttp's ClientConnectionResetError is one too
                raise ClientDisconnected() from None
            record.bytes_out += len(data)
            record.events_out += events

    async def emit(pieces: list[Piece], arrived: float) -> bool:
        out: list[bytes] = []
        outputs = 0
        done = False
        error: str | None = None
        for piece in pieces:
            if piece.error:
                error = piece.error  # what came before it in this chunk is still delivered
                break
            rendered = writer.render(piece)
            if rendered:
                out.append(rendered)
            outputs += piece.output
            done = done or piece.done
        record.overhead_s += time.perf_counter() - arrived
        await write(b"".join(out), len(out))
        if outputs:
            record.content_written(time.monotonic())
            record.output_events += outputs
        if error:
            raise GatewayError(502, "upstream_error", error)
        return done

    async def pump() -> None:
        done = await emit(opened.held, time.perf_counter())
        last_data = last_write = loop.time()
        while not done:
            wake = min(last_data + provider.timeouts.idle_s, last_write + heartbeat_s, call.deadline)
            try:
                async with asyncio.timeout_at(wake):
                    chunk = await opened.response.content.readany()
            except TimeoutError:
                now = loop.time()
                if now >= call.deadline:
                    raise errors.timeout("total", _total_s(call)) from None
                if now >= last_data + provider.timeouts.idle_s:
                    raise errors.timeout("idle", provider.timeouts.idle_s) from None
                await write(KEEP_ALIVE, 0)
                last_write = now
                continue
            arrived = time.perf_counter()
            last_data = last_write = loop.time()
            if not chunk:
                raise GatewayError(502, "upstream_truncated",
                                   f"Provider {opened.target.provider} ended the stream without its terminator; "
                                   "the response is incomplete", outcome="truncated")
            pieces = [p for event in opened.parser.feed(chunk) for p in opened.translator.translate(event)]
            done = await emit(pieces, arrived)

    failure: GatewayError | None = None
    try:
        try:
            await pump()
        except GatewayError as exc:
            failure = exc
        except (aiohttp.ClientError, SSEError) as exc:
            failure = GatewayError(502, "upstream_error",
                                   f"Provider {opened.target.provider} broke the stream: {type(exc).__name__}")
        account_stream(call, opened)
        if failure is not None:
            failure.message = call.scrub(failure.message)  # it may quote the upstream
            record.fail(failure.outcome, failure.code, failure.message)
            await write(writer.error(failure), 1)
        else:
            await write(writer.closing(record), 1)
        await response.write_eof()
    except (ClientDisconnected, ConnectionResetError):
        # A write found the client gone before aiohttp cancelled us: the same ending.
        record.client_disconnected = True
        record.fail("client_disconnected", "client_disconnected", "the client closed the connection")
    return response


def account_stream(call: Call, opened: OpenStream) -> None:
    usage = opened.translator.usage
    price = call.config.pricing.get(opened.target.model)
    if usage.known:
        call.record.account(usage.prompt_tokens, usage.completion_tokens, source="upstream", price=price)
    else:
        # No usage from upstream (aborted, or it never sent one): one delta is about one token.
        call.record.account(usage.prompt_tokens, call.record.output_events, source="estimated", price=price)
