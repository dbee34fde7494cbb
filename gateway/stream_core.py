"""The relay's decisions, without I/O: what an upstream stream means for the client.

Like `sse.py`, nothing here touches a socket, an event loop or a clock: bytes
and times go in, decisions come out. `relay.py` does the reading, writing and
waiting around them, so every rule of a stream is tested byte by byte
(tests/test_stream_core.py).

An upstream stream moves through three phases, in order:

    OPENING    chunks are parsed and their events held until the first model
               output (or the terminator): a failure here is still invisible to
               the client, so it is an `AttemptFailed` that may be retried
    STREAMING  committed: the held events, then each chunk's, rendered for the
               client the moment they complete
    ENDED      the terminator, an upstream failure, a timeout or the gateway's
               shutdown ended it; the `Batch` that ended it says which

A method called in the wrong phase raises `PhaseError`: the caller has a bug.

    >>> from gateway.providers.openai import OpenAIStream
    >>> from gateway.renderers import TokenStreamRenderer
    >>> stream = UpstreamStream("p", OpenAIStream(), TokenStreamRenderer(),
    ...                         Deadlines(0.0, idle_s=30, heartbeat_s=15, total_at=600, total_s=600))
    >>> stream.feed_opening(b'data: {"choices":[{"delta":{"content":"Hi"}}]}\\n\\n')
    True
    >>> stream.commit(0.1)
    Batch(data=b'data: {"token":"Hi"}\\n\\n', events=1, outputs=1, done=False, error=None)
    >>> stream.feed(b"data: [DONE]\\n\\n", 0.2).done, stream.phase
    (True, <Phase.ENDED: 'ended'>)

The retry policy is here too: which upstream answers and connection failures
may be retried, what they are called, and how long to wait before the next
try. (aiohttp's exception classes are read here as data; nothing is sent.)
"""

from __future__ import annotations

import enum
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from . import errors
from .errors import GatewayError
from .providers import Piece, StreamTranslator, Usage, error_message
from .renderers import Renderer
from .sse import SSEError, SSEParser, encode_comment

KEEP_ALIVE = encode_comment("keep-alive")


class Phase(enum.Enum):
    OPENING = "opening"
    STREAMING = "streaming"
    ENDED = "ended"


class PhaseError(RuntimeError):
    """A stream method was called in a phase where it has no meaning (a bug in the caller)."""


class AttemptFailed(Exception):
    """An attempt failed before anything reached the client; `retryable` says whether
    another try (this provider again, or the next) may succeed."""

    def __init__(self, error: GatewayError, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error, self.retryable, self.retry_after = error, retryable, retry_after


@dataclass(frozen=True, slots=True)
class Batch:
    """What to write to the client after one upstream read, or one timer."""

    data: bytes = b""
    events: int = 0                    # SSE events in `data` (keep-alive comments are not events)
    outputs: int = 0                   # model-output pieces among them: TTFT, gaps, the token estimate
    done: bool = False                 # the upstream's terminator: the stream ended well
    error: GatewayError | None = None  # the stream ended with this failure, after `data`
    parts: tuple[bytes, ...] = field(default=(), repr=False)  # `data` by event: resumable streams number them

    @property
    def ended(self) -> bool:
        return self.done or self.error is not None


HEARTBEAT = Batch(KEEP_ALIVE)


class Deadlines:
    """Which wait ends the next upstream read.

    Three clocks run while a stream is open: the upstream's silence (`idle_s`,
    a failure), the client's silence (`heartbeat_s`, answered with a comment so
    proxies keep the connection) and the request's total deadline. Times are
    the caller's monotonic clock, in seconds.

        >>> d = Deadlines(0.0, idle_s=30, heartbeat_s=15, total_at=600, total_s=600)
        >>> d.wake_at(), d.fired(15.0), d.wake_at()
        (15.0, None, 30.0)
        >>> d.fired(30.0).code
        'timeout_idle'
    """

    __slots__ = ("idle_s", "heartbeat_s", "total_at", "total_s", "last_data", "last_write")

    def __init__(self, now: float, *, idle_s: float, heartbeat_s: float, total_at: float, total_s: float) -> None:
        self.idle_s, self.heartbeat_s, self.total_at, self.total_s = idle_s, heartbeat_s, total_at, total_s
        self.last_data = self.last_write = now

    def wake_at(self) -> float:
        return min(self.last_data + self.idle_s, self.last_write + self.heartbeat_s, self.total_at)

    def data(self, now: float) -> None:
        self.last_data = self.last_write = now

    def fired(self, now: float) -> GatewayError | None:
        """The timeout that ends the stream, or None: time for a heartbeat (its clock restarts)."""
        if now >= self.total_at:
            return errors.timeout("total", self.total_s)
        if now >= self.last_data + self.idle_s:
            return errors.timeout("idle", self.idle_s)
        self.last_write = now
        return None


class UpstreamStream:
    """One upstream SSE response, from its first chunk to its end, as the client will see it."""

    def __init__(self, provider: str, translator: StreamTranslator, renderer: Renderer,
                 deadlines: Deadlines, *, max_event_bytes: int = 16 * 1024 * 1024) -> None:
        self.provider = provider
        self.translator = translator
        self.renderer = renderer
        self.deadlines = deadlines
        self.phase = Phase.OPENING
        self.outputs = 0  # model-output pieces received and rendered: the estimate when usage is missing
        # An endless event is an error, not unbounded memory; and a provider speaks SSE, so a line that
        # is not SSE (a proxy's HTML page, a bare JSON body) is an error, not a line to skip.
        self._parser = SSEParser(max_event_bytes, strict=True)
        self._held: list[Piece] = []
        self._ready = False

    # --- OPENING ---------------------------------------------------------------

    def feed_opening(self, chunk: bytes) -> bool:
        """Hold the events of one chunk read while opening; True once the stream can be committed
        (it has model output, or ended properly with none). Raises `AttemptFailed`."""
        self._expect(Phase.OPENING)
        if not chunk:
            raise AttemptFailed(GatewayError(502, "upstream_error", f"Provider {self.provider} ended the "
                                             "stream before the first token"), retryable=True)
        pieces, violation = self._pieces(chunk)
        for piece in pieces:
            if piece.error:
                raise AttemptFailed(GatewayError(502, "upstream_error", piece.error), retryable=True)
            self._held.append(piece)
            self._ready = self._ready or piece.done or piece.model_output
        if violation is not None and not any(piece.done for piece in self._held):
            raise AttemptFailed(violation, retryable=True)
        return self._ready

    def commit(self, now: float) -> Batch:
        """The held events, rendered: the first bytes the client gets."""
        self._expect(Phase.OPENING)
        if not self._ready:
            raise PhaseError("commit before the first model output or the terminator")
        self.phase = Phase.STREAMING
        held, self._held = self._held, []
        self.deadlines.data(now)
        return self._render(held)

    # --- STREAMING -------------------------------------------------------------

    def wake_at(self) -> float:
        return self.deadlines.wake_at()

    def feed(self, chunk: bytes, now: float) -> Batch:
        """One upstream chunk (b"" at the end of the body): every complete event in it, rendered."""
        self._expect(Phase.STREAMING)
        self.deadlines.data(now)
        if not chunk:
            return self._end(GatewayError(502, "upstream_truncated",
                                          f"Provider {self.provider} ended the stream without its terminator; "
                                          "the response is incomplete", outcome="truncated"))
        return self._render(*self._pieces(chunk))

    def timer_fired(self, now: float) -> Batch:
        """The read waited until `wake_at()`: a heartbeat, or the timeout that ends the stream."""
        self._expect(Phase.STREAMING)
        timeout = self.deadlines.fired(now)
        return HEARTBEAT if timeout is None else self._end(timeout)

    def broken(self, reason: str) -> Batch:
        """The upstream connection failed mid-stream (`reason`: the exception's name, never its text)."""
        self._expect(Phase.STREAMING)
        return self._end(self._broken(reason))

    def shut_down(self) -> Batch:
        """The gateway is stopping and its drain window is over: the stream ends with an error
        saying so, never dressed up as a clean end, nor as the client's doing."""
        self._expect(Phase.STREAMING)
        return self._end(errors.shutting_down())

    # --- the result ------------------------------------------------------------

    def tokens(self) -> tuple[Usage, str]:
        """The tokens to account and where they come from: the upstream's own usage, else an
        estimate of one token per output delta received."""
        usage = self.translator.usage
        if usage.known:
            return usage, "upstream"
        return Usage(usage.prompt_tokens, self.outputs), "estimated"

    # --- internals -------------------------------------------------------------

    def _pieces(self, chunk: bytes) -> tuple[list[Piece], GatewayError | None]:
        """The pieces of the chunk's complete events, and the protocol violation that cut the chunk
        short, if one did (the parser is then done: the stream must end)."""
        try:
            events, violation = self._parser.feed(chunk), None
        except SSEError as exc:  # its text is the parser's own, never the upstream's bytes
            events = exc.events
            violation = GatewayError(502, "upstream_error", f"Provider {self.provider} broke the event stream: {exc}")
        return [piece for event in events for piece in self.translator.translate(event)], violation

    def _render(self, pieces: list[Piece], violation: GatewayError | None = None) -> Batch:
        out: list[bytes] = []
        outputs = 0
        done = False
        error: GatewayError | None = None
        for piece in pieces:
            if piece.error:
                error = GatewayError(502, "upstream_error", piece.error)
                break  # what came before it in this chunk is still delivered
            rendered = self.renderer.render(piece)
            if rendered:
                out.append(rendered)
            outputs += piece.model_output
            done = done or piece.done
        if error is None and not done:
            error = violation  # after the events that came before it
        self.outputs += outputs
        batch = Batch(b"".join(out), len(out), outputs, done, error, tuple(out))
        if batch.ended:
            self.phase = Phase.ENDED
        return batch

    def _end(self, error: GatewayError) -> Batch:
        self.phase = Phase.ENDED
        return Batch(error=error)

    def _broken(self, reason: str) -> GatewayError:
        return GatewayError(502, "upstream_error", f"Provider {self.provider} broke the stream: {reason}")

    def _expect(self, phase: Phase) -> None:
        if self.phase is not phase:
            raise PhaseError(f"the stream is {self.phase.value}, not {phase.value}")


# --- the retry policy ----------------------------------------------------------

def classify_status(provider: str, status: int, body: bytes, retry_after: str | None) -> AttemptFailed:
    """An upstream's non-200 answer: retryable (429, 5xx) or final (the request is at fault).

        >>> failed = classify_status("p", 503, b'{"error": {"message": "busy"}}', "2")
        >>> failed.retryable, failed.retry_after, failed.error.code, failed.error.message
        (True, 2.0, 'upstream_error', 'Provider p answered 503: busy')
        >>> classify_status("p", 401, b"", None).error.code
        'upstream_auth_failed'
    """
    message = f"Provider {provider} answered {status}: {error_message(body)}"
    wait = parse_retry_after(retry_after)
    if status == 429:
        return AttemptFailed(GatewayError(429, "upstream_rate_limited", message, outcome="upstream_error",
                                          retry_after=wait), retryable=True, retry_after=wait)
    if status >= 500:
        return AttemptFailed(GatewayError(502, "upstream_error", message), retryable=True, retry_after=wait)
    if status in (401, 403):
        # The gateway's provider key was refused: not something the client can fix.
        return AttemptFailed(GatewayError(502, "upstream_auth_failed", message, outcome="upstream_error"),
                             retryable=False)
    return AttemptFailed(GatewayError(status if 400 <= status < 500 else 502, "upstream_rejected", message),
                         retryable=False)


def not_an_event_stream(provider: str, content_type: str | None) -> AttemptFailed | None:
    """A 200 answer to a stream request whose Content-Type says it is something else (a proxy's
    HTML page, a JSON body from a provider that ignored `stream`): retryable, as the next try or
    provider may answer properly. With no Content-Type at all, the strict parser judges the bytes.

        >>> not_an_event_stream("p", "text/event-stream; charset=utf-8") is None
        True
        >>> not_an_event_stream("p", "text/html; charset=utf-8").error.message
        'Provider p answered 200 with text/html, not text/event-stream'
    """
    if content_type is None:
        return None
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type == "text/event-stream":
        return None
    shown = media_type[:80] or "an empty Content-Type"
    return AttemptFailed(GatewayError(502, "upstream_error", f"Provider {provider} answered 200 with {shown}, "
                                      "not text/event-stream"), retryable=True)


def oversized_answer(provider: str, limit: int) -> AttemptFailed:
    """A non-streamed answer longer than `limit` (`max_event_bytes`: the whole answer is one
    event): retryable, and never read to its end.

        >>> oversized_answer("p", 1024).error.message
        'Provider p sent a response over 1024 bytes'
    """
    return AttemptFailed(GatewayError(502, "upstream_error", f"Provider {provider} sent a response over {limit} "
                                      "bytes"), retryable=True)


def unreachable(provider: str, exc: BaseException) -> AttemptFailed:
    """No connection to the provider could be made: retryable (the next try, or the next provider,
    may get through). The message names the kind of failure and never quotes the exception, whose
    text carries the connection key: the URL's host and any proxy credentials.

        >>> unreachable("p", aiohttp.ClientConnectorError(None, socket.gaierror(-2, "unknown name"))).error.message
        'Could not reach provider p: DNS lookup failed'
    """
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        kind = "TLS handshake failed: certificate not trusted"
    elif isinstance(exc, aiohttp.ClientSSLError):
        kind = "TLS handshake failed"
    elif isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, socket.gaierror):
        kind = "DNS lookup failed"
    elif isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ConnectionRefusedError):
        kind = "connection refused"
    else:
        kind = type(exc).__name__
    return AttemptFailed(GatewayError(502, "upstream_unreachable", f"Could not reach provider {provider}: {kind}"),
                         retryable=True)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header; an HTTP date (rare from LLM APIs) gives None."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def backoff_delay(retry: int, base_ms: float, cap_ms: float, retry_after: float | None,
                  uniform: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait before retry number `retry` (0-based) on the same provider.

    Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"):
    uniform(0, min(cap, base * 2^retry)) spreads the retries of many clients
    apart. A `Retry-After` is honoured up to the cap.

        >>> backoff_delay(3, 100, 2000, None, uniform=lambda low, high: high)
        0.8
        >>> backoff_delay(0, 100, 2000, 5.0, uniform=lambda low, high: high)
        2.0
    """
    cap = cap_ms / 1000
    delay = uniform(0, min(cap, base_ms / 1000 * 2 ** retry))
    if retry_after is not None:
        delay = min(cap, max(delay, retry_after))
    return delay


def opening_timeout(wait_until: float, total_at: float, total_s: float,
                    first_token_s: float) -> GatewayError | AttemptFailed:
    """The wait for an attempt's first content ran out at `wait_until`: the request's deadline (the
    request is over) or the attempt's first-token window (the next try may be faster). Judged by
    the time the wait was set for, not the clock when it fired: uvloop's timers round to the
    millisecond and may fire a little before it.

        >>> type(opening_timeout(5.0, 600, 600, 5)).__name__, opening_timeout(600.0, 600, 600, 5).code
        ('AttemptFailed', 'timeout_total')
    """
    if wait_until >= total_at:
        return errors.timeout("total", total_s)
    return AttemptFailed(errors.timeout("first_token", first_token_s), retryable=True)
