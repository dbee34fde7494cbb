"""The mock's aiohttp app: routes, turning a request into a Job, and start_mock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Final

import orjson
from aiohttp import web

from .dialects import ANTHROPIC, OPENAI, Dialect, Job, prompt_tokens
from .faults import NO_FAULT, in_scope, read_fault
from .knobs import MockProfile, read_knobs
from .playback import (
    STALL_S,
    Stop,
    client_gone,
    complete_job,
    error_response,
    json_response,
    sleep_or_stop,
    stream_job,
)
from .records import Recorder, RecordLimits, key_status
from .state import STATE, State

_MODELS: Final = ("mock-1",)
# Frozen, so shared instances are safe argument defaults.
_DEFAULT_PROFILE: Final = MockProfile()
_DEFAULT_LIMITS: Final = RecordLimits()


async def _serve(
    request: web.Request, dialect: Dialect, profile_name: str, raw: bytes, record: dict[str, Any]
) -> web.StreamResponse:
    state = request.app[STATE]

    def reject(status: int, message: str, retry_after: str | None = None) -> web.Response:
        record["outcome"], record["status"] = "status", status
        return error_response(dialect, status, message, retry_after)

    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return reject(400, "request body is not valid JSON")
    if not isinstance(body, dict):
        return reject(400, "request body must be a JSON object")

    if problem := dialect.precheck(request.headers):
        return reject(400, problem)

    scoped = in_scope(request.headers, profile_name)
    try:
        fault, times, counter_key = read_fault(request.headers)
        knobs = read_knobs(request.headers, state.profiles.get(profile_name, state.default))
    except ValueError as exc:
        return reject(400, str(exc))

    # The app-wide key always applies; the header one is scoped like a fault,
    # so a test can make only the primary provider reject the gateway's key.
    required = [k for k in (state.require_api_key, request.headers.get("X-Mock-Require-Key") if scoped else None)
                if k is not None]
    record["api_key"] = key_status(dialect.api_key(request.headers), required)
    if required and record["api_key"] != "matched":
        return reject(401, "Invalid API key")

    if not scoped:
        fault = NO_FAULT
    elif times is not None and not state.fault_counts.admit(counter_key, times):
        fault = NO_FAULT

    if fault.stall_headers:
        record["outcome"] = "stalled"
        await sleep_or_stop(request, STALL_S)
    if fault.status is not None:
        return reject(fault.status, f"Mock fault: status {fault.status}", fault.retry_after)

    tokens = knobs.tokens
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < tokens:
        tokens, cut_short = limit, True
    else:
        cut_short = False
    model = body.get("model")
    stream = body.get("stream") is True
    job = Job(
        id=f"{dialect.id_prefix}{record['id']}",
        created=int(record["started"]),
        model=model if isinstance(model, str) else "mock-1",
        tokens=tokens,
        cut_short=cut_short,
        prompt_tokens=prompt_tokens(body),
        # A non-streamed answer always carries usage; a stream only if asked.
        include_usage=(dialect.include_usage(body) if stream else True) and not fault.omit_usage,
        eol=knobs.eol,
    )
    if stream:
        return await stream_job(request, dialect, job, fault, knobs.delays, knobs.chunk_bytes, record)
    return await complete_job(request, dialect, job, fault, knobs.delays, record)


async def _handle(request: web.Request, dialect: Dialect) -> web.StreamResponse:
    state = request.app[STATE]
    profile_name = request.match_info.get("profile", "default")
    raw = await request.read()
    record = state.recorder.start(state.next_id, dialect.name, profile_name, request.path, request.headers, raw)
    record["started"] = time.time()
    state.next_id += 1
    try:
        return await _serve(request, dialect, profile_name, raw, record)
    except Stop as stop:
        # Stopped before any headers went out (a stream catches its own).
        record["outcome"] = stop.outcome
        # aiohttp's attempt to send this fails quietly on the dead connection
        # (or, at shutdown, tells the client the request was not served).
        return web.Response(status=503)
    except asyncio.CancelledError:
        # Only when the host runner enables handler_cancellation, or at shutdown.
        record["outcome"] = "client_closed" if client_gone(request) else "cancelled"
        raise
    except Exception:
        record["outcome"] = "error"
        raise
    finally:
        record["ended"] = time.time()


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    return await _handle(request, OPENAI)


async def _messages(request: web.Request) -> web.StreamResponse:
    return await _handle(request, ANTHROPIC)


async def _models(request: web.Request) -> web.Response:
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "mock"} for name in _MODELS]
    return json_response({"object": "list", "data": data})


async def _get_records(request: web.Request) -> web.Response:
    return json_response(request.app[STATE].recorder.records())


async def _reset_records(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.recorder.clear()
    state.fault_counts.clear()
    return json_response([])


async def _on_shutdown(app: web.Application) -> None:
    # Lets stalled handlers end now instead of holding runner.cleanup() for
    # its whole shutdown timeout.
    app[STATE].close()


def build_mock_app(
    profiles: Mapping[str, MockProfile] | None = None,
    default: MockProfile = _DEFAULT_PROFILE,
    require_api_key: str | None = None,
    *,
    record_requests: bool = False,
    record_limits: RecordLimits = _DEFAULT_LIMITS,
) -> web.Application:
    """The mock as an aiohttp app. `record_requests` serves `/_mock/requests`; without
    it the mock keeps no record of anything and that path is a 404."""
    app = web.Application()
    app[STATE] = State(profiles=dict(profiles or {}), default=default, require_api_key=require_api_key,
                       recorder=Recorder(record_requests, record_limits))
    for prefix in ("", "/{profile}"):
        app.router.add_post(prefix + "/v1/chat/completions", _chat_completions)
        app.router.add_post(prefix + "/v1/messages", _messages)
        app.router.add_get(prefix + "/v1/models", _models)
    if record_requests:
        app.router.add_get("/_mock/requests", _get_records)
        app.router.add_delete("/_mock/requests", _reset_records)
    app.on_shutdown.append(_on_shutdown)
    return app


async def start_mock(
    host: str,
    port: int,
    profiles: Mapping[str, MockProfile] | None = None,
    default: MockProfile = _DEFAULT_PROFILE,
    require_api_key: str | None = None,
    *,
    record_requests: bool = False,
) -> tuple[web.AppRunner, int]:
    """Serve the mock on host:port (0 picks a free port); returns the runner,
    which the caller cleans up, and the bound port. Use a literal address
    (127.0.0.1): a name resolving to several addresses binds each to its own
    free port and only the first is returned."""
    app = build_mock_app(profiles, default, require_api_key, record_requests=record_requests)
    # A client that goes away cancels its handler: sleeping streams need no polling to notice
    # (thousands of idle streams would otherwise each wake every few ms).
    app[STATE].cancels_handlers = True
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]
