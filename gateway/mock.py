"""Built-in mock LLM provider: a real aiohttp server speaking the OpenAI Chat
Completions and Anthropic Messages dialects, streaming and not.

The gateway reaches it over TCP exactly like a real provider, so its tests can
drive latency and faults (status errors, dropped or truncated streams, stalls,
rejected keys) through request headers and then ask `/_mock/requests` what the
provider actually saw, including when it noticed the client going away.

Every endpoint is served at `/v1/...` (profile "default") and at
`/{profile}/v1/...`, so one server can pose as several providers whose latency
differs by profile; an unknown profile name gets the default profile.

Per-request headers:
  X-Mock-Tokens, X-Mock-First-Token-Delay-Ms, X-Mock-Inter-Token-Delay-Ms
                          override the profile
  X-Mock-Line-Ending      lf | crlf | cr, inside and between SSE lines
  X-Mock-Chunk-Bytes      write the stream in K-byte pieces
  X-Mock-Require-Key      401 unless the dialect's key header carries it
  X-Mock-Scope            profiles that X-Mock-Fault and X-Mock-Require-Key
                          apply to (default: all); the knobs apply regardless
  X-Mock-Fault            `;`-separated key=value:
      status=S[;retry_after=R]  error response in the dialect's shape
      drop_after=N              N tokens, then close without ending the body
      truncate_after=N          N tokens, then end the body without terminator
      error_after=N             N tokens, then an in-stream error event
      stall=headers | stall=first | stall_after=N
                                no headers / headers only / N tokens, then
                                nothing for an hour (client close still seen)
      omit_usage=1              no usage objects
      times=K;key=X             only the first K in-scope requests with key X

The first delay runs from the headers to the first token, which carries the
stream preamble (OpenAI role chunk; Anthropic message_start,
content_block_start, ping) with it: a fault after 0 tokens sends no events.

GET /_mock/requests lists one record per chat/messages request: id, dialect,
profile, path, headers (lowercase names), body, started, ended (null while in
flight), status (sent HTTP status, null if none), tokens_sent and outcome:
null while in flight, then completed | client_closed | dropped | truncated |
error_event | stalled | status (a non-2xx answer) | server_shutdown |
cancelled | error. DELETE /_mock/requests clears records and `times` counters.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson
from aiohttp import web

__all__ = ["WORDS", "MockProfile", "build_mock_app", "mock_text", "start_mock"]

# Multi-byte words on purpose: a relay that splits UTF-8 characters across
# reads, or measures text in bytes, shows up as a changed completion.
WORDS: Final[tuple[str, ...]] = (
    "Hello",
    " wörld",
    " 你好",
    " 🙂",
    " streaming",
    " tokens",
    " ça",
    " va",
    " naïve",
    " Ωmega",
    " relay",
    " ✓",
)


def mock_text(n: int) -> str:
    """The full completion the mock produces for n tokens."""
    return "".join(WORDS[i % len(WORDS)] for i in range(n))


@dataclass(frozen=True, slots=True)
class MockProfile:
    tokens: int = 20  # completion tokens per response
    first_token_delay_ms: float = 50.0  # delay after response headers before the first content event
    inter_token_delay_ms: float = 20.0


# Short enough that `ended` lands within a few ms of the peer closing, while a
# sleeping handler costs next to nothing. Polling the transport works however
# the app is hosted (start_mock, aiohttp_client, the CLI), unlike
# handler_cancellation, which is a runner setting the app cannot enforce.
_POLL_S: Final = 0.005
_STALL_S: Final = 3600.0
# Records hold whole bodies; the cap keeps a long benchmark against the mock
# from growing without bound.
_MAX_RECORDS: Final = 10_000
_LINE_ENDINGS: Final = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}
_MODELS: Final = ("mock-1",)


@dataclass(slots=True)
class _State:
    profiles: Mapping[str, MockProfile]
    default: MockProfile
    require_api_key: str | None
    records: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=_MAX_RECORDS))
    next_id: int = 1
    fault_counts: dict[str, int] = field(default_factory=dict)
    closing: bool = False


_STATE: Final = web.AppKey("mock_state", _State)


class _Stop(Exception):
    """Ends a handler early: the peer went away or the server is shutting down."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _sleep(request: web.Request, seconds: float) -> None:
    """Sleep, but raise _Stop as soon as the client closes or the app shuts down."""
    state = request.app[_STATE]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        if _client_gone(request):
            raise _Stop("client_closed")
        if state.closing:
            raise _Stop("server_shutdown")
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        await asyncio.sleep(min(remaining, _POLL_S))


# --- faults -----------------------------------------------------------------

# Stream faults that fire after N content tokens, by header key.
_CUTS: Final = {
    "drop_after": "drop",
    "truncate_after": "truncate",
    "error_after": "error",
    "stall_after": "stall",
}


@dataclass(frozen=True, slots=True)
class _Fault:
    status: int | None = None
    retry_after: str | None = None
    stall_headers: bool = False
    cut: str | None = None  # drop | truncate | error | stall, after `cut_after` tokens
    cut_after: int = 0
    omit_usage: bool = False


_NO_FAULT: Final = _Fault()


def _nonneg_int(name: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not an integer") from None
    if n < 0:
        raise ValueError(f"{name}: {value!r} is negative")
    return n


def _parse_fault(spec: str) -> tuple[_Fault, int | None, str]:
    """X-Mock-Fault -> (fault, times, key). Unknown keys are errors, so a typo
    in a test fails loudly instead of silently testing the happy path."""
    fields: dict[str, str] = {}
    for part in spec.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"X-Mock-Fault: {part.strip()!r} is not key=value")
        fields[key.strip()] = value.strip()

    status = retry_after = cut = None
    cut_after = 0
    stall_headers = omit_usage = False
    times: int | None = None
    counter_key = ""
    for key, value in fields.items():
        if key == "status":
            status = _nonneg_int(key, value)
            if not 400 <= status <= 599:
                raise ValueError(f"status: {status} is not an error status")
        elif key == "retry_after":
            retry_after = value
        elif key in _CUTS:
            if cut is not None:
                raise ValueError("X-Mock-Fault: at most one of " + ", ".join(_CUTS))
            cut, cut_after = _CUTS[key], _nonneg_int(key, value)
        elif key == "stall" and value == "headers":
            stall_headers = True
        elif key == "stall" and value == "first":
            # Headers then nothing is exactly a stall after zero tokens.
            if cut is not None:
                raise ValueError("X-Mock-Fault: at most one of " + ", ".join(_CUTS))
            cut, cut_after = "stall", 0
        elif key == "omit_usage":
            omit_usage = value not in ("", "0", "false")
        elif key == "times":
            times = _nonneg_int(key, value)
        elif key == "key":
            counter_key = value
        else:
            raise ValueError(f"X-Mock-Fault: unknown {key}={value}")
    fault = _Fault(status, retry_after, stall_headers, cut, cut_after, omit_usage)
    return fault, times, counter_key


# --- dialects ---------------------------------------------------------------

# status -> (OpenAI error type, OpenAI code, Anthropic error type)
_ERROR_KINDS: Final[dict[int, tuple[str, str | None, str]]] = {
    400: ("invalid_request_error", None, "invalid_request_error"),
    401: ("invalid_request_error", "invalid_api_key", "authentication_error"),
    403: ("permission_error", None, "permission_error"),
    404: ("invalid_request_error", "model_not_found", "not_found_error"),
    429: ("rate_limit_error", "rate_limit_exceeded", "rate_limit_error"),
    529: ("server_error", None, "overloaded_error"),
}


def _error_kind(status: int) -> tuple[str, str | None, str]:
    if status in _ERROR_KINDS:
        return _ERROR_KINDS[status]
    if status >= 500:
        return ("server_error", None, "api_error")
    return ("invalid_request_error", None, "invalid_request_error")


def _words(content: Any) -> int:
    """Whitespace words in a string content or a list of text blocks."""
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        return sum(
            len(block["text"].split())
            for block in content
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        )
    return 0


def _prompt_tokens(body: Mapping[str, Any]) -> int:
    messages = body.get("messages")
    n = _words(body.get("system"))
    if isinstance(messages, list):
        n += sum(_words(m.get("content")) for m in messages if isinstance(m, dict))
    return n


@dataclass(frozen=True, slots=True)
class _Job:
    """What one request asked for, after profile, knobs and fault are applied."""

    id: str
    created: int
    model: str
    tokens: int  # tokens the completion has (after max_tokens)
    cut_short: bool  # max_tokens ended it: "length" / "max_tokens"
    prompt_tokens: int
    include_usage: bool
    eol: bytes


class _Dialect(Protocol):
    name: str
    id_prefix: str

    def precheck(self, request: web.Request) -> str | None: ...
    def api_key(self, request: web.Request) -> str | None: ...
    def error_body(self, status: int, message: str) -> dict[str, Any]: ...
    def include_usage(self, body: Mapping[str, Any]) -> bool: ...
    def full(self, job: _Job) -> dict[str, Any]: ...
    def preamble(self, job: _Job) -> bytes: ...
    def token(self, job: _Job, i: int) -> bytes: ...
    def finish(self, job: _Job) -> bytes: ...
    def error_event(self, job: _Job) -> bytes: ...
    def stream_error_status(self) -> int: ...


class _OpenAI:
    name = "openai"
    id_prefix = "chatcmpl-mock"

    def precheck(self, request: web.Request) -> str | None:
        return None

    def api_key(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind, code, _ = _error_kind(status)
        return {"error": {"message": message, "type": kind, "code": code}}

    def include_usage(self, body: Mapping[str, Any]) -> bool:
        options = body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    def _usage(self, job: _Job) -> dict[str, int]:
        return {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.tokens,
            "total_tokens": job.prompt_tokens + job.tokens,
        }

    def _finish_reason(self, job: _Job) -> str:
        return "length" if job.cut_short else "stop"

    def full(self, job: _Job) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": job.id,
            "object": "chat.completion",
            "created": job.created,
            "model": job.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": mock_text(job.tokens)},
                    "logprobs": None,
                    "finish_reason": self._finish_reason(job),
                }
            ],
        }
        if job.include_usage:
            out["usage"] = self._usage(job)
        return out

    def _chunk(self, job: _Job, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": job.id,
            "object": "chat.completion.chunk",
            "created": job.created,
            "model": job.model,
            "choices": choices,
        }
        # OpenAI puts "usage": null on every chunk once usage was asked for.
        if job.include_usage:
            chunk["usage"] = usage
        return b"data: " + orjson.dumps(chunk) + job.eol + job.eol

    def _delta(self, job: _Job, delta: dict[str, str], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._chunk(job, [choice])

    def preamble(self, job: _Job) -> bytes:
        return self._delta(job, {"role": "assistant", "content": ""})

    def token(self, job: _Job, i: int) -> bytes:
        return self._delta(job, {"content": WORDS[i % len(WORDS)]})

    def finish(self, job: _Job) -> bytes:
        out = self._delta(job, {}, self._finish_reason(job))
        if job.include_usage:
            out += self._chunk(job, [], self._usage(job))
        return out + b"data: [DONE]" + job.eol + job.eol

    def error_event(self, job: _Job) -> bytes:
        return b"data: " + orjson.dumps(self.error_body(500, "The server had an error")) + job.eol + job.eol

    def stream_error_status(self) -> int:
        return 500


_EMPTY_TEXT: Final = {"type": "text", "text": ""}


class _Anthropic:
    name = "anthropic"
    id_prefix = "msg_mock"

    def precheck(self, request: web.Request) -> str | None:
        if not request.headers.get("anthropic-version"):
            return "anthropic-version: header is required"
        return None

    def api_key(self, request: web.Request) -> str | None:
        return request.headers.get("x-api-key")

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"type": "error", "error": {"type": _error_kind(status)[2], "message": message}}

    def include_usage(self, body: Mapping[str, Any]) -> bool:
        return True

    def _stop_reason(self, job: _Job) -> str:
        return "max_tokens" if job.cut_short else "end_turn"

    def full(self, job: _Job) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": job.id,
            "type": "message",
            "role": "assistant",
            "model": job.model,
            "content": [{"type": "text", "text": mock_text(job.tokens)}],
            "stop_reason": self._stop_reason(job),
            "stop_sequence": None,
        }
        if job.include_usage:
            out["usage"] = {"input_tokens": job.prompt_tokens, "output_tokens": job.tokens}
        return out

    def _event(self, job: _Job, data: dict[str, Any]) -> bytes:
        eol = job.eol
        return b"event: " + data["type"].encode() + eol + b"data: " + orjson.dumps(data) + eol + eol

    def preamble(self, job: _Job) -> bytes:
        message: dict[str, Any] = {
            "id": job.id,
            "type": "message",
            "role": "assistant",
            "model": job.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        if job.include_usage:
            message["usage"] = {"input_tokens": job.prompt_tokens, "output_tokens": 1}
        return (
            self._event(job, {"type": "message_start", "message": message})
            + self._event(job, {"type": "content_block_start", "index": 0, "content_block": _EMPTY_TEXT})
            + self._event(job, {"type": "ping"})
        )

    def token(self, job: _Job, i: int) -> bytes:
        delta = {"type": "text_delta", "text": WORDS[i % len(WORDS)]}
        return self._event(job, {"type": "content_block_delta", "index": 0, "delta": delta})

    def finish(self, job: _Job) -> bytes:
        message_delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop_reason(job), "stop_sequence": None},
        }
        if job.include_usage:
            message_delta["usage"] = {"output_tokens": job.tokens}
        return (
            self._event(job, {"type": "content_block_stop", "index": 0})
            + self._event(job, message_delta)
            + self._event(job, {"type": "message_stop"})
        )

    def error_event(self, job: _Job) -> bytes:
        error = {"type": "overloaded_error", "message": "Overloaded"}
        return self._event(job, {"type": "error", "error": error})

    def stream_error_status(self) -> int:
        return 529


_OPENAI: Final = _OpenAI()
_ANTHROPIC: Final = _Anthropic()


# --- request handling ---------------------------------------------------------


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    body = orjson.dumps(data)
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _error_response(
    dialect: _Dialect, status: int, message: str, retry_after: str | None = None
) -> web.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    return _json(dialect.error_body(status, message), status, headers)


def _knob(request: web.Request, name: str, default: float) -> float:
    raw = request.headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not a number") from None
    if value < 0:
        raise ValueError(f"{name}: {raw!r} is negative")
    return value


class _Out:
    """Writes stream bytes, optionally in K-byte pieces so events (and UTF-8
    characters) arrive split across TCP segments."""

    __slots__ = ("_resp", "_chunk")

    def __init__(self, resp: web.StreamResponse, chunk_bytes: int) -> None:
        self._resp = resp
        self._chunk = chunk_bytes

    async def send(self, data: bytes) -> None:
        try:
            if not self._chunk:
                await self._resp.write(data)
                return
            for start in range(0, len(data), self._chunk):
                await self._resp.write(data[start : start + self._chunk])
                # Yield so each piece leaves in its own send() instead of the
                # loop coalescing them (TCP_NODELAY is on for aiohttp sockets).
                await asyncio.sleep(0)
        except ConnectionError as exc:
            raise _Stop("client_closed") from exc


async def _flush(request: web.Request) -> None:
    """Wait until written bytes left the transport, so an abort drops the
    connection after the tokens rather than discarding them."""
    transport = request.transport
    while transport is not None and not transport.is_closing() and transport.get_write_buffer_size():
        await asyncio.sleep(_POLL_S)


async def _stream(
    request: web.Request,
    dialect: _Dialect,
    job: _Job,
    fault: _Fault,
    delays: tuple[float, float],
    chunk_bytes: int,
    record: dict[str, Any],
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)  # a StreamResponse sends its headers right away
    record["status"] = 200
    try:
        await _emit(request, _Out(resp, chunk_bytes), dialect, job, fault, delays, record)
    except _Stop as stop:
        record["outcome"] = stop.outcome
    # aiohttp ends the chunked body after the handler: cleanly for a finished
    # or truncated stream, and quietly not at all on a closed connection.
    return resp


async def _emit(
    request: web.Request,
    out: _Out,
    dialect: _Dialect,
    job: _Job,
    fault: _Fault,
    delays: tuple[float, float],
    record: dict[str, Any],
) -> None:
    first_s, inter_s = delays
    # A cut after N >= tokens still fires, before the finish events: "drop
    # before [DONE]" is a case worth testing.
    stop_at = min(fault.cut_after, job.tokens) if fault.cut else job.tokens
    for i in range(stop_at):
        await _sleep(request, first_s if i == 0 else inter_s)
        # The preamble rides with the first token, so a fault after 0 tokens
        # means nothing but headers reached the client (the gateway may retry).
        await out.send(dialect.preamble(job) + dialect.token(job, i) if i == 0 else dialect.token(job, i))
        record["tokens_sent"] = i + 1
    if stop_at == 0:
        await _sleep(request, first_s)

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
    else:
        record["outcome"] = "stalled"
        await _sleep(request, _STALL_S)


async def _complete(
    request: web.Request,
    dialect: _Dialect,
    job: _Job,
    fault: _Fault,
    delays: tuple[float, float],
    record: dict[str, Any],
) -> web.StreamResponse:
    """Non-streaming: wait as long as generating the tokens would take, then
    answer. Cuts have no stream to cut: drop/truncate close the connection
    with no response, error answers with the dialect's error status, and any
    stall never sends headers."""
    first_s, inter_s = delays
    n = min(fault.cut_after, job.tokens) if fault.cut else job.tokens
    await _sleep(request, first_s + inter_s * max(n - 1, 0))
    if fault.cut is None:
        record["outcome"], record["status"] = "completed", 200
        record["tokens_sent"] = job.tokens
        return _json(dialect.full(job))
    if fault.cut in ("drop", "truncate"):
        record["outcome"] = "dropped" if fault.cut == "drop" else "truncated"
        if request.transport is not None:
            request.transport.abort()
        return web.Response()  # never sent: the transport is gone
    if fault.cut == "error":
        status = dialect.stream_error_status()
        record["outcome"], record["status"] = "status", status
        return _error_response(dialect, status, "Overloaded" if status == 529 else "The server had an error")
    record["outcome"] = "stalled"
    await _sleep(request, _STALL_S)
    return web.Response(status=504)


async def _serve(
    request: web.Request, dialect: _Dialect, profile_name: str, record: dict[str, Any]
) -> web.StreamResponse:
    state = request.app[_STATE]

    def reject(status: int, message: str, retry_after: str | None = None) -> web.Response:
        record["outcome"], record["status"] = "status", status
        return _error_response(dialect, status, message, retry_after)

    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return reject(400, "request body is not valid JSON")
    if not isinstance(body, dict):
        return reject(400, "request body must be a JSON object")
    record["body"] = body

    if problem := dialect.precheck(request):
        return reject(400, problem)

    scope = request.headers.get("X-Mock-Scope")
    in_scope = scope is None or profile_name in {s.strip() for s in scope.split(",")}
    try:
        spec = request.headers.get("X-Mock-Fault")
        fault, times, counter_key = _parse_fault(spec) if spec else (_NO_FAULT, None, "")
        profile = state.profiles.get(profile_name, state.default)
        tokens = int(_knob(request, "X-Mock-Tokens", profile.tokens))
        delays = (
            _knob(request, "X-Mock-First-Token-Delay-Ms", profile.first_token_delay_ms) / 1000,
            _knob(request, "X-Mock-Inter-Token-Delay-Ms", profile.inter_token_delay_ms) / 1000,
        )
        chunk_bytes = int(_knob(request, "X-Mock-Chunk-Bytes", 0))
        ending = request.headers.get("X-Mock-Line-Ending", "lf").lower()
        if ending not in _LINE_ENDINGS:
            raise ValueError(f"X-Mock-Line-Ending: {ending!r} is not one of lf, crlf, cr")
    except ValueError as exc:
        return reject(400, str(exc))

    # The app-wide key always applies; the header one is scoped like a fault,
    # so a test can make only the primary provider reject the gateway's key.
    for required in (state.require_api_key, request.headers.get("X-Mock-Require-Key") if in_scope else None):
        if required is not None and dialect.api_key(request) != required:
            return reject(401, "Invalid API key")

    if not in_scope:
        fault = _NO_FAULT
    elif times is not None:
        count = state.fault_counts[counter_key] = state.fault_counts.get(counter_key, 0) + 1
        if count > times:
            fault = _NO_FAULT

    if fault.stall_headers:
        record["outcome"] = "stalled"
        await _sleep(request, _STALL_S)
    if fault.status is not None:
        return reject(fault.status, f"Mock fault: status {fault.status}", fault.retry_after)

    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < tokens:
        tokens, cut_short = limit, True
    else:
        cut_short = False
    model = body.get("model")
    stream = body.get("stream") is True
    job = _Job(
        id=f"{dialect.id_prefix}{record['id']}",
        created=int(record["started"]),
        model=model if isinstance(model, str) else "mock-1",
        tokens=tokens,
        cut_short=cut_short,
        prompt_tokens=_prompt_tokens(body),
        # A non-streamed answer always carries usage; a stream only if asked.
        include_usage=(dialect.include_usage(body) if stream else True) and not fault.omit_usage,
        eol=_LINE_ENDINGS[ending],
    )
    if stream:
        return await _stream(request, dialect, job, fault, delays, chunk_bytes, record)
    return await _complete(request, dialect, job, fault, delays, record)


async def _handle(request: web.Request, dialect: _Dialect) -> web.StreamResponse:
    state = request.app[_STATE]
    profile_name = request.match_info.get("profile", "default")
    record: dict[str, Any] = {
        "id": state.next_id,
        "dialect": dialect.name,
        "profile": profile_name,
        "path": request.path,
        "headers": {name.lower(): value for name, value in request.headers.items()},
        "body": None,
        "started": time.time(),
        "ended": None,
        "outcome": None,
        "status": None,
        "tokens_sent": 0,
    }
    state.next_id += 1
    state.records.append(record)
    try:
        return await _serve(request, dialect, profile_name, record)
    except _Stop as stop:
        # Stopped before any headers went out (a stream catches its own).
        record["outcome"] = stop.outcome
        # aiohttp's attempt to send this fails quietly on the dead connection
        # (or, at shutdown, tells the client the request was not served).
        return web.Response(status=503)
    except asyncio.CancelledError:
        # Only when the host runner enables handler_cancellation, or at shutdown.
        record["outcome"] = "client_closed" if _client_gone(request) else "cancelled"
        raise
    except Exception:
        record["outcome"] = "error"
        raise
    finally:
        record["ended"] = time.time()


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    return await _handle(request, _OPENAI)


async def _messages(request: web.Request) -> web.StreamResponse:
    return await _handle(request, _ANTHROPIC)


async def _models(request: web.Request) -> web.Response:
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "mock"} for name in _MODELS]
    return _json({"object": "list", "data": data})


async def _get_records(request: web.Request) -> web.Response:
    return _json(list(request.app[_STATE].records))


async def _reset_records(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    state.records.clear()
    state.fault_counts.clear()
    return _json([])


async def _on_shutdown(app: web.Application) -> None:
    # Lets stalled handlers end now instead of holding runner.cleanup() for
    # its whole shutdown timeout.
    app[_STATE].closing = True


def build_mock_app(
    profiles: Mapping[str, MockProfile] | None = None,
    default: MockProfile = MockProfile(),
    require_api_key: str | None = None,
) -> web.Application:
    app = web.Application()
    app[_STATE] = _State(profiles=dict(profiles or {}), default=default, require_api_key=require_api_key)
    for prefix in ("", "/{profile}"):
        app.router.add_post(prefix + "/v1/chat/completions", _chat_completions)
        app.router.add_post(prefix + "/v1/messages", _messages)
        app.router.add_get(prefix + "/v1/models", _models)
    app.router.add_get("/_mock/requests", _get_records)
    app.router.add_delete("/_mock/requests", _reset_records)
    app.on_shutdown.append(_on_shutdown)
    return app


async def start_mock(
    host: str,
    port: int,
    profiles: Mapping[str, MockProfile] | None = None,
    default: MockProfile = MockProfile(),
    require_api_key: str | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve the mock on host:port (0 picks a free port); returns the runner,
    which the caller cleans up, and the bound port. Use a literal address
    (127.0.0.1): a name resolving to several addresses binds each to its own
    free port and only the first is returned."""
    runner = web.AppRunner(build_mock_app(profiles, default, require_api_key))
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]
