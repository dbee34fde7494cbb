"""The aiohttp application: routes, error shape, CORS, resource lifetimes.

    >>> from gateway.config import load_config
    >>> app = build_app(load_config())
    >>> sorted(r.resource.canonical for r in app.router.routes() if r.method == "POST")
    ['/v1/chat/completions', '/v1/stream/chat']
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import aiohttp_cors
import orjson
from aiohttp import web

from . import forwarded, static_site
from .config import Config
from .errors import GatewayError, Scrubber, invalid_request
from .metrics import Metrics
from .record import RequestLog, RequestRecord
from .relay import (
    Call,
    ChatCompletionsWriter,
    OpenStream,
    StreamWriter,
    TokenStreamWriter,
    account_stream,
    open_stream,
    open_unary,
    relay_stream,
)
from .routing import bucket, candidates, choose_arm, pick_user_key, user_key_hash
from .validation import parse_chat_request, parse_stream_chat_request

CONFIG = web.AppKey("config", Config)
SESSIONS = web.AppKey("sessions", dict[str, aiohttp.ClientSession])
LOG = web.AppKey("log", RequestLog)
SCRUB = web.AppKey("scrub", Scrubber)
DRAINING = web.AppKey("draining", list[bool])
METRICS = web.AppKey("metrics", Metrics)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
ARM_OVERRIDE_HEADER = "X-Gateway-Arm-Override"


def build_app(config: Config, *, log: RequestLog | None = None) -> web.Application:
    app = web.Application(client_max_size=config.server.max_body_bytes, middlewares=[error_middleware])
    app.middlewares.append(forwarded.middleware(config.server.trusted_proxies))
    app[CONFIG] = config
    app[SCRUB] = Scrubber(config.secrets())
    app[DRAINING] = [False]
    app[METRICS] = Metrics()
    if log is not None:
        app[LOG] = log
    app.on_shutdown.append(_start_draining)
    app.cleanup_ctx.append(_request_log)
    app.cleanup_ctx.append(_provider_sessions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/stream/chat", stream_chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    static_site.add_routes(app)
    _setup_cors(app, config)
    return app


def _setup_cors(app: web.Application, config: Config) -> None:
    # Registered on the routes, so the headers are added in on_response_prepare:
    # they reach streaming responses too, which are prepared by the handler.
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=False, allow_headers="*", allow_methods=["GET", "POST"],
        expose_headers=("X-Request-Id", "X-Gateway-Arm"), max_age=600)
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in config.server.cors_origins})
    for route in list(app.router.routes()):
        cors.add(route)


async def _start_draining(app: web.Application) -> None:
    # Shutdown began: /readyz says so while in-flight requests finish.
    app[DRAINING][0] = True


async def _request_log(app: web.Application) -> AsyncIterator[None]:
    owned = LOG not in app
    if owned:
        app[LOG] = RequestLog(app[CONFIG].log.path, app[SCRUB])
    yield
    if owned:
        app[LOG].close()


async def _provider_sessions(app: web.Application) -> AsyncIterator[None]:
    """One pooled ClientSession per provider for the life of the app."""
    sessions: dict[str, aiohttp.ClientSession] = {}
    for name, provider in app[CONFIG].providers.items():
        app[METRICS].upstream_limit.labels(name).set(provider.max_connections)
        connector = aiohttp.TCPConnector(limit=provider.max_connections, keepalive_timeout=provider.keepalive_s)
        sessions[name] = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                               auto_decompress=True)
    app[SESSIONS] = sessions
    yield
    await asyncio.gather(*(s.close() for s in sessions.values()))


# --- errors ------------------------------------------------------------------

def error_response(error: GatewayError, headers: dict[str, str] | None = None) -> web.Response:
    headers = dict(headers or {})
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return web.Response(status=error.status, body=error.json(), content_type="application/json",
                        headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    """Every error leaves in the OpenAI error shape; never a stack trace."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status, "http_error")
        message = {404: f"No endpoint {request.method} {request.path}",
                   405: f"Method {request.method} is not allowed on {request.path}"}.get(exc.status, exc.reason)
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(GatewayError(exc.status, code, message), keep)


# --- handlers ----------------------------------------------------------------

async def models(request: web.Request) -> web.Response:
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "gateway"}
            for name in request.app[CONFIG].public_models()]
    return web.json_response({"object": "list", "data": data}, dumps=lambda o: orjson.dumps(o).decode())


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    sessions = request.app.get(SESSIONS, {})
    ready = (not request.app[DRAINING][0] and len(sessions) == len(request.app[CONFIG].providers)
             and not any(s.closed for s in sessions.values()))
    return web.json_response({"status": "ready" if ready else "not ready"}, status=200 if ready else 503)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _handle(request, "chat_completions", parse_chat_request)


async def stream_chat(request: web.Request) -> web.StreamResponse:
    return await _handle(request, "stream_chat", parse_stream_chat_request)


async def _handle(request: web.Request, endpoint: str,
                  parse: Callable[[Any, Config], dict[str, Any]]) -> web.StreamResponse:
    """The one place a chat request becomes exactly one log line, whatever happens."""
    app = request.app
    config = app[CONFIG]
    incoming_id = request.headers.get("X-Request-Id", "")
    record = RequestRecord(incoming_id if _REQUEST_ID.fullmatch(incoming_id) else uuid.uuid4().hex, endpoint)
    headers = {"X-Request-Id": record.request_id}
    opened: list[OpenStream] = []
    in_flight = app[METRICS].in_flight.labels(endpoint)
    in_flight.inc()
    try:
        chat = parse(await _read_json(request), config)
        record.stream = bool(chat.get("stream"))
        call = _plan(request, config, chat, record, headers)
        if endpoint == "stream_chat" or record.stream:
            stream = await open_stream(call)
            opened.append(stream)
            writer: StreamWriter = (TokenStreamWriter() if endpoint == "stream_chat" else
                                    ChatCompletionsWriter(bool((chat.get("stream_options") or {})
                                                               .get("include_usage"))))
            return await relay_stream(call, request, stream, writer, headers)
        completion = await open_unary(call)
        record.content_written(time.monotonic())
        record.account(completion.usage.prompt_tokens, completion.usage.completion_tokens,
                       source="upstream" if completion.usage.known else "none",
                       price=config.pricing.get(record.upstream_model or ""))
        record.status = 200
        record.bytes_out = len(completion.body)
        return web.Response(body=completion.body, content_type="application/json", headers=headers)
    except GatewayError as exc:
        exc.message = app[SCRUB](exc.message)  # it may quote an upstream
        record.status = exc.status
        record.fail(exc.outcome, exc.code, exc.message)
        return error_response(exc, headers)
    except asyncio.CancelledError:
        # The client went away (aiohttp cancels the handler: handler_cancellation).
        record.client_disconnected = True
        record.fail("client_disconnected", "client_disconnected", "the client closed the connection")
        raise
    except Exception as exc:  # a bug: report it generically, log the type, never a trace to the client
        error = GatewayError(500, "internal_error", "The gateway failed to handle the request",
                             outcome="gateway_error")
        record.status = 500
        record.fail("gateway_error", "internal_error", f"{type(exc).__name__}: {app[SCRUB](str(exc))}")
        return error_response(error, headers)
    finally:
        for stream in opened:
            # Released if fully read (back to the pool), closed otherwise: never pooled half-read.
            call.let_go(stream.target, stream.response)
            if record.usage_source == "none":  # cut short before the relay could account
                account_stream(call, stream)
        if record.outcome != "ok" and record.usage_source == "none" and not record.output_events:
            record.cost_usd = 0.0  # failed before any token: nothing was generated to pay for
        record.finish()
        app[LOG].emit(record)
        app[METRICS].observe(record)
        in_flight.dec()


async def _read_json(request: web.Request) -> Any:
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CONFIG].server.max_body_bytes
        raise GatewayError(413, "request_too_large", f"The request body is larger than {limit} bytes") from None
    if not body:
        raise invalid_request("The request body is empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, "invalid_json", f"The request body is not valid JSON: {exc}") from None


def _plan(request: web.Request, config: Config, chat: dict[str, Any], record: RequestRecord,
          headers: dict[str, str]) -> Call:
    route = config.routes.get(chat["model"])
    record.route = chat["model"]
    if route is None:
        raise GatewayError(404, "model_not_found",
                           f"The model {chat['model']!r} does not exist; available: "
                           f"{', '.join(config.public_models())}", param="model")
    auth = request.headers.get("Authorization", "")
    api_key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    user = pick_user_key(chat.get("user"), request.headers.get("X-User-Id"), api_key)
    record.user_key_hash, record.user_key_source = user_key_hash(route.salt, user.value), user.source
    arm = choose_arm(route, bucket(route.salt, user.value))
    override = request.headers.get(ARM_OVERRIDE_HEADER)
    if override is not None and config.server.allow_arm_override:
        chosen = next((a for a in route.arms if a.name == override), None)
        if chosen is None:
            raise GatewayError(400, "unknown_arm", f"Route {route.name!r} has no arm {override!r}",
                               param=ARM_OVERRIDE_HEADER)
        arm = chosen
    record.arm = arm.name
    headers["X-Gateway-Arm"] = arm.name
    return Call(config, request.app[SESSIONS], record, chat, candidates(route, arm),
                forward={k.lower(): v for k, v in request.headers.items()},
                # One deadline from arrival (the loop's clock is time.monotonic): retries never stack past it.
                deadline=record.started + config.providers[arm.provider].timeouts.total_s,
                in_use=request.app[METRICS].upstream_in_use, scrub=request.app[SCRUB])
