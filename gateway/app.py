"""The aiohttp application: routes, error shape, CORS, resource lifetimes.

    >>> from gateway.config import load_config
    >>> app = build_app(load_config())
    >>> sorted(r.resource.canonical for r in app.router.routes() if r.method == "POST")
    ['/v1/chat/completions', '/v1/stream/chat']
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp_cors
import orjson
from aiohttp import web

from .config import Config
from .endpoints import ENDPOINTS, Endpoint
from .errors import GatewayError, Scrubber, invalid_request, shutting_down
from .inflight import InFlight, Ticket
from .metrics import Metrics
from .record import RequestLog, RequestRecord
from .relay import Dispatch, stream_response, unary_response
from .routing import ARM_OVERRIDE_HEADER, UserKey, pick_user_key, plan
from .upstreams import Upstreams

CONFIG = web.AppKey("config", Config)
UPSTREAMS = web.AppKey("upstreams", Upstreams)
LOG = web.AppKey("log", RequestLog)
SCRUB = web.AppKey("scrub", Scrubber)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
METRICS = web.AppKey("metrics", Metrics)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def build_app(config: Config, *, log: RequestLog | None = None) -> web.Application:
    app = web.Application(client_max_size=config.server.max_body_bytes, middlewares=[error_middleware])
    app[CONFIG] = config
    app[SCRUB] = Scrubber(config.secrets())
    app[IN_FLIGHT] = InFlight(config.server.max_streams)
    app[METRICS] = Metrics()
    app[UPSTREAMS] = Upstreams(config.providers, app[METRICS].upstream_in_use, app[METRICS].upstream_limit)
    if log is not None:
        app[LOG] = log
    app.on_shutdown.append(_start_draining)
    app.on_response_prepare.append(_close_when_draining)
    app.cleanup_ctx.append(_request_log)
    app.cleanup_ctx.append(_provider_sessions)
    for endpoint in ENDPOINTS:
        app.router.add_post(endpoint.path, _handler(endpoint))
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
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
    # Shutdown began: /readyz says so while in-flight requests finish. (`gateway serve` says so
    # earlier, before it stops accepting: cli.py; this covers any other runner.)
    app[IN_FLIGHT].draining = True


async def _close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
    # While draining, each response ends its connection: clients and balancers move to another instance.
    if request.app[IN_FLIGHT].draining:
        response.force_close()


async def _request_log(app: web.Application) -> AsyncIterator[None]:
    owned = LOG not in app
    if owned:
        app[LOG] = RequestLog(app[CONFIG].log.path)
    yield
    if owned:
        app[LOG].close()


async def _provider_sessions(app: web.Application) -> AsyncIterator[None]:
    """One pooled ClientSession per provider for the life of the app."""
    async with app[UPSTREAMS].running():
        yield


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
    ready = not request.app[IN_FLIGHT].draining and request.app[UPSTREAMS].ready()
    return web.json_response({"status": "ready" if ready else "not ready"}, status=200 if ready else 503)


def _handler(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await _handle(request, endpoint)

    handle.__name__ = endpoint.name
    return handle


async def _handle(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    """The one place a chat request becomes exactly one log line, whatever happens:
    parse -> plan (routing) -> open, relay (relay.py) -> the record finished."""
    app = request.app
    config = app[CONFIG]
    incoming_id = request.headers.get("X-Request-Id", "")
    record = RequestRecord(incoming_id if _REQUEST_ID.fullmatch(incoming_id) else uuid.uuid4().hex, endpoint.name,
                           scrub=app[SCRUB])
    headers = {"X-Request-Id": record.request_id}
    in_flight = app[METRICS].in_flight.labels(endpoint.name)
    in_flight.inc()
    ticket: Ticket | None = None
    try:
        ticket = app[IN_FLIGHT].admit()  # over server.max_streams: a 429; the shutdown drains what is admitted
        chat = endpoint.parse(await _read_json(request))
        model = chat.setdefault("model", config.default_model())
        record.requested(model, bool(chat.get("stream")))
        route = plan(config, model, _user_key(request, chat), request.headers.get(ARM_OVERRIDE_HEADER))
        record.routed(route.arm.name, route.user_key_hash, route.user.source)
        headers["X-Gateway-Arm"] = route.arm.name
        dispatch = Dispatch(app[UPSTREAMS], record, chat, route, deadline=record.started + route.total_s,
                            heartbeat_s=config.server.heartbeat_s,
                            forward={k.lower(): v for k, v in request.headers.items()}, ticket=ticket)
        if record.stream:
            return await stream_response(dispatch, request, endpoint.renderer(chat), headers)
        return await unary_response(dispatch, headers)
    except GatewayError as exc:
        return error_response(record.failed(exc), headers)
    except asyncio.CancelledError:
        if ticket is None or not ticket.cut:
            # The client went away (aiohttp cancels the handler: handler_cancellation).
            record.disconnected()
            raise
        error = record.failed(shutting_down())  # the drain window ended first (inflight.py cancelled it)
        if record.is_committed:
            raise  # a stream stuck writing to a slow client, which aiohttp gave up on at the very end
        return _uncancelled(error_response(error, headers))  # a 503
    except Exception as exc:  # a bug: reported generically; the log gets the type, never a trace
        return error_response(record.crashed(exc), headers)
    finally:
        _finish(app, record)
        app[IN_FLIGHT].release(ticket)
        in_flight.dec()


def _uncancelled(response: web.Response) -> web.Response:
    """The cancellation was the shutdown's own, and is handled: the response still goes out."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return response


def _finish(app: web.Application, record: RequestRecord) -> None:
    record.finished(app[CONFIG].pricing)
    app[LOG].emit(record)
    app[METRICS].observe(record)


def _user_key(request: web.Request, chat: dict[str, Any]) -> UserKey:
    auth = request.headers.get("Authorization", "")
    api_key = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    return pick_user_key(chat.get("user"), request.headers.get("X-User-Id"), api_key)


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
