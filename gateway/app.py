"""The aiohttp application: routes, error shape, CORS, resource lifetimes.

    >>> from gateway.config import load_config
    >>> app = build_app(load_config())
    >>> sorted(r.resource.canonical for r in app.router.routes() if r.method == "POST")
    ['/v1/chat/completions', '/v1/messages', '/v1/stream/chat']
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp_cors
import orjson
from aiohttp import web

from . import admin, forwarded, static_site
from .admin import LIVE
from .config import Config, Route
from .endpoints import BY_PATH, ENDPOINTS, Endpoint
from .errors import GatewayError, Scrubber, invalid_request, shutting_down
from .eventlog import EventLogs, MemoryEventLogs, RedisEventLogs
from .guard import Verdict
from .inflight import InFlight, Ticket
from .intake import read_json
from .keys import authenticate, authorize_route, find_key, presented_key
from .limits import Limiter, reservation
from .live import POLL_S, LiveRoutes, with_trip
from .metrics import Metrics
from .record import RequestLog, RequestRecord
from .relay import Dispatch, stream_response, unary_response
from .reload import RUNTIME, Box, Runtime, restart_needed
from .resumable import RESUME_HEADERS, Resumables, instance_name
from .resume import StreamMeta, not_found, parse_last_event_id
from .routing import ARM_OVERRIDE_HEADER, pick_user_key, plan
from .store import MemoryStore, RedisStore, Store
from .upstreams import Upstreams

CONFIG = web.AppKey("config", Config)
UPSTREAMS = web.AppKey("upstreams", Upstreams)
LOG = web.AppKey("log", RequestLog)
SCRUB = web.AppKey("scrub", Scrubber)
IN_FLIGHT = web.AppKey("in_flight", InFlight)
METRICS = web.AppKey("metrics", Metrics)
LIMITER = web.AppKey("limiter", Limiter)
RESUMABLES = web.AppKey("resumables", Resumables)  # absent when resumable streams are off
BACKGROUND: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("background")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def build_app(config: Config, *, log: RequestLog | None = None, workers: int = 1) -> web.Application:
    """The gateway as an aiohttp app; `workers` is how many processes share the limits when they are
    kept in-process (each enforces its share)."""
    app = web.Application(client_max_size=config.server.max_body_bytes, middlewares=[error_middleware])
    app.middlewares.append(forwarded.middleware(config.server.trusted_proxies))
    app[CONFIG] = config
    app[SCRUB] = Scrubber(config.secrets())
    app[IN_FLIGHT] = InFlight(config.server.max_streams)
    app[METRICS] = Metrics(config.public_models())
    app[UPSTREAMS] = Upstreams(config.providers, app[METRICS].upstream_in_use, app[METRICS].upstream_limit)
    store: Store = (RedisStore(config.store.redis_url, timeout_ms=config.store.timeout_ms, prefix=config.store.prefix)
                    if config.store.redis_url else MemoryStore())
    app[LIMITER] = Limiter(store, on_error=config.store.on_error, share=workers,
                           on_store_error=lambda reason: _store_down(app, reason))
    app[LIVE] = LiveRoutes(config, store, workers=workers)
    app[RUNTIME] = Box(Runtime.of(config, workers))  # what a request reads at its start; SIGHUP replaces it
    app[BACKGROUND] = set()
    if config.resume.active(workers=workers, redis=bool(config.store.redis_url)):
        logs: EventLogs = (RedisEventLogs(config.store.redis_url, timeout_ms=config.store.timeout_ms,
                                          prefix=config.store.prefix,
                                          max_events=config.resume.max_bytes_per_stream // 8)
                           if config.store.redis_url else MemoryEventLogs())
        app[RESUMABLES] = Resumables(logs, config.resume, heartbeat_s=config.server.heartbeat_s,
                                     instance=instance_name())
        app.router.add_get("/v1/streams/{stream_id}", resume_stream)
        app.router.add_delete("/v1/streams/{stream_id}", cancel_stream)
    if log is not None:
        app[LOG] = log
    app.on_shutdown.append(_start_draining)
    app.on_response_prepare.append(_close_when_draining)
    app.cleanup_ctx.append(_request_log)
    app.cleanup_ctx.append(_provider_sessions)
    app.cleanup_ctx.append(_limits)
    app.cleanup_ctx.append(_live_routes)
    if RESUMABLES in app:
        app.cleanup_ctx.append(_resumables)  # last in: closed first, while the log and the providers remain
    for endpoint in ENDPOINTS:
        app.router.add_post(endpoint.path, _handler(endpoint))
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    admin.add_routes(app, config)
    static_site.add_routes(app)
    _setup_cors(app, config)
    return app


def _setup_cors(app: web.Application, config: Config) -> None:
    # Registered on the routes, so the headers are added in on_response_prepare:
    # they reach streaming responses too, which are prepared by the handler.
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=False, allow_headers="*", allow_methods=["GET", "POST", "DELETE"],
        expose_headers=("X-Request-Id", "X-Gateway-Arm", *RESUME_HEADERS), max_age=600)
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


async def _limits(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[LIMITER].close()


async def _live_routes(app: web.Application) -> AsyncIterator[None]:
    """With a shared store, every worker polls the live weights and guard state (live.py)."""
    live = app[LIVE]
    poller = None
    if live.shared:
        poller = asyncio.create_task(_poll_live(app))
    yield
    if poller is not None:
        poller.cancel()
    background = app[BACKGROUND]
    if background:  # a trip being written to the store
        await asyncio.wait(list(background), timeout=1.0)


async def _poll_live(app: web.Application) -> None:
    live = app[LIVE]
    while True:
        try:
            await live.refresh()
        except Exception:  # the store is down: keep the last known state (the limiter logs the outage)
            pass
        for name, state in live.states.items():
            app[RUNTIME].runtime.guard.untrip(name, set(state.tripped))
        await asyncio.sleep(POLL_S)


def _store_down(app: web.Application, reason: str) -> None:
    # Once per outage (the limiter remembers); the URL may hold a password, so it is never logged.
    if LOG in app:
        app[LOG].event("store", status="unavailable", kind=app[LIMITER].store.kind, reason=reason,
                       on_error=app[CONFIG].store.on_error)


async def _resumables(app: web.Application) -> AsyncIterator[None]:
    await app[RESUMABLES].start()
    yield
    await app[RESUMABLES].close()


async def _provider_sessions(app: web.Application) -> AsyncIterator[None]:
    """One pooled ClientSession per provider for the life of the app."""
    async with app[UPSTREAMS].running():
        yield


# --- errors ------------------------------------------------------------------

def error_response(error: GatewayError, headers: dict[str, str] | None = None,
                   body: Callable[[GatewayError], bytes] = GatewayError.json) -> web.Response:
    headers = dict(headers or {})
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return web.Response(status=error.status, body=body(error), content_type="application/json",
                        headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    """Every error leaves in its endpoint's error shape (the OpenAI one off the table); never a stack trace."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status, "http_error")
        message = {404: f"No endpoint {request.method} {request.path}",
                   405: f"Method {request.method} is not allowed on {request.path}"}.get(exc.status, exc.reason)
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        endpoint = BY_PATH.get(request.path)
        return error_response(GatewayError(exc.status, code, message), keep,
                              endpoint.error_body if endpoint else GatewayError.json)


# --- handlers ----------------------------------------------------------------

async def models(request: web.Request) -> web.Response:
    """The routes, in a shape both SDKs read: OpenAI's list (`object`, `created`, `owned_by`) and
    Anthropic's page (`type`, `display_name`, `created_at`, `has_more`). Each ignores the other's
    fields. A route has no release date: both dates are the epoch, as Anthropic does for an unknown one.
    The whole list is one page, whatever `limit` asks."""
    names = request.app[RUNTIME].runtime.config.public_models()
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "gateway",
             "type": "model", "display_name": name, "created_at": "1970-01-01T00:00:00Z"} for name in names]
    page = {"object": "list", "data": data, "has_more": False,
            "first_id": names[0] if names else None, "last_id": names[-1] if names else None}
    return web.json_response(page, dumps=lambda o: orjson.dumps(o).decode())


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    live, tripped = app[LIVE], app[METRICS].guard_tripped
    for route in app[RUNTIME].runtime.config.routes.values():
        if route.guard is not None:  # from the live state: a trip in another worker, a person's re-enable
            state = live.state(route)
            for arm in route.arms[1:]:
                tripped.labels(route.name, arm.name).set(1 if arm.name in state.tripped else 0)
    body, content_type = app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    store_ok = await app[LIMITER].check_store()
    ready = (not app[IN_FLIGHT].draining and app[UPSTREAMS].ready()
             and (store_ok or app[CONFIG].store.on_error == "open"))
    body = {"status": "ready" if ready else "not ready",
            "store": {"kind": app[LIMITER].store.kind, "ok": store_ok, "on_error": app[CONFIG].store.on_error}}
    return web.json_response(body, status=200 if ready else 503)


def _handler(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await _handle(request, endpoint)

    handle.__name__ = endpoint.name
    return handle


async def _handle(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    """The one place a chat request becomes exactly one log line, whatever happens:
    parse -> plan (routing) -> open, relay (relay.py) -> the record finished. A resumable
    stream hands its record over to the task that reads its upstream (resumable.py), which
    finishes it when the stream really ends."""
    app = request.app
    runtime = app[RUNTIME].runtime
    config = runtime.config
    incoming_id = request.headers.get("X-Request-Id", "")
    record = RequestRecord(incoming_id if _REQUEST_ID.fullmatch(incoming_id) else uuid.uuid4().hex, endpoint.name,
                           scrub=app[SCRUB])
    headers = {"X-Request-Id": record.request_id}
    in_flight = app[METRICS].in_flight.labels(endpoint.name)
    in_flight.inc()
    admission = None
    ticket: Ticket | None = None
    handed_off = False

    def finish() -> None:
        _finish(app, record)
        if admission is not None:
            app[LIMITER].settle(admission, _tokens_used(record))
        app[IN_FLIGHT].release(ticket)
        in_flight.dec()

    def hand_off() -> Callable[[], None]:
        nonlocal handed_off
        handed_off = True
        return finish

    try:
        ticket = app[IN_FLIGHT].admit()  # over server.max_streams: a 429; the shutdown drains what is admitted
        key = authenticate(config.auth, request.headers)
        record.authenticated(key.name if key else None)
        body = await read_json(request, config.server.max_body_bytes)
        chat = endpoint.parse(body)
        model = chat.model or config.default_model()
        record.requested(model, chat.stream)
        user = pick_user_key(chat.user, request.headers.get("X-User-Id"), presented_key(request.headers))
        route = plan(config, model, user, request.headers.get(ARM_OVERRIDE_HEADER), app[LIVE].weights)
        authorize_route(key, model)
        record.routed(route.arm.name, route.user_key_hash, route.user.source)
        headers["X-Gateway-Arm"] = route.arm.name
        admission = await app[LIMITER].admit(key, reserve=reservation(chat.body), ttl_s=route.total_s)
        record.limited(admission.log_fields())
        headers.update(admission.headers())
        if admission.refusal is not None:
            raise admission.refusal
        dispatch = Dispatch(app[UPSTREAMS], record, chat, route, deadline=record.started + route.total_s,
                            heartbeat_s=config.server.heartbeat_s,
                            forward=request.headers,
                            max_event_bytes=config.server.max_event_bytes, ticket=ticket,
                            hedger=runtime.hedgers.get(route.route.name))
        if dispatch.hedger is not None and record.stream:  # only streams hedge: the budget counts them
            dispatch.hedger.admit(asyncio.get_running_loop().time())
        if record.stream and RESUMABLES in app and _wants_resume(request, body):
            return await app[RESUMABLES].stream(dispatch, request, endpoint.renderer(chat), headers,
                                                key.name if key else None, hand_off)
        if record.stream:
            return await stream_response(dispatch, request, endpoint.renderer(chat), headers)
        return await unary_response(dispatch, headers)
    except GatewayError as exc:
        return error_response(record.failed(exc), headers, endpoint.error_body)
    except asyncio.CancelledError:
        if handed_off:
            raise  # a reader of a resumable stream went away: the stream goes on without it
        if ticket is None or not ticket.cut:
            # The client went away (aiohttp cancels the handler: handler_cancellation).
            record.disconnected()
            raise
        error = record.failed(shutting_down())  # the drain window ended first (inflight.py cancelled it)
        if record.is_committed:
            raise  # a stream stuck writing to a slow client, which aiohttp gave up on at the very end
        return _uncancelled(error_response(error, headers, endpoint.error_body))  # a 503
    except Exception as exc:  # a bug: reported generically; the log gets the type, never a trace
        if handed_off:
            raise  # the record is the stream task's; aiohttp reports the bug
        return error_response(record.crashed(exc), headers, endpoint.error_body)
    finally:
        if not handed_off:
            finish()


def _wants_resume(request: web.Request, body: object) -> bool:
    """Opted in: `X-Resumable: 1` on any chat endpoint, or `"resumable": true` in a /v1/stream/chat body."""
    return request.headers.get("X-Resumable", "").strip() == "1" or (
        isinstance(body, dict) and body.get("resumable") is True)


async def _find_stream(request: web.Request) -> tuple[Resumables, StreamMeta] | None:
    """The stream a resume or cancel names, if its token and gateway key are right."""
    resumables = request.app[RESUMABLES]
    auth = request.app[CONFIG].auth
    presented = presented_key(request.headers)
    key = find_key(auth.keys, presented) if auth.enabled and presented else None
    meta = await resumables.find(request.match_info["stream_id"], request.headers.get("X-Stream-Token"),
                                 key.name if key else None)
    return None if meta is None else (resumables, meta)


async def resume_stream(request: web.Request) -> web.StreamResponse:
    """GET /v1/streams/{stream_id}: the events after `Last-Event-ID`, then the live tail. Not a
    request line of its own (the stream's line counts it); a `resume` event line."""
    found = await _find_stream(request)
    if found is None:
        return error_response(not_found())
    resumables, meta = found
    after = parse_last_event_id(request.headers.get("Last-Event-ID"))
    if after is None:
        return error_response(invalid_request("Last-Event-ID must be an event id of this stream",
                                              "Last-Event-ID"))
    request.app[LOG].event("resume", stream_id=meta.stream_id, request_id=meta.request_id, after=after,
                           instance=resumables.instance, owner=meta.owner)
    return await resumables.resume(request, meta, after)


async def cancel_stream(request: web.Request) -> web.Response:
    """DELETE /v1/streams/{stream_id}: close the upstream now (what Stop sends)."""
    found = await _find_stream(request)
    if found is None:
        return error_response(not_found())
    resumables, meta = found
    await resumables.cancel(meta)
    return web.Response(status=204)


def reload(app: web.Application, new: Config, workers: int) -> str | None:
    """Apply a re-read config file (SIGHUP); returns why it was refused, or None when applied.
    Requests in flight keep their plan; the next ones read the new routes."""
    needed = restart_needed(app[CONFIG], new)
    if needed:
        return f"{', '.join(needed)} changed: only a restart applies that; nothing was reloaded"
    box = app[RUNTIME]
    box.runtime = box.runtime.reloaded(new)
    app[LIVE].config = new
    return None


def _uncancelled(response: web.Response) -> web.Response:
    """The cancellation was the shutdown's own, and is handled: the response still goes out."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return response


def _finish(app: web.Application, record: RequestRecord) -> None:
    runtime = app[RUNTIME].runtime
    record.finished(runtime.config.pricing)
    app[LOG].emit(record)
    app[METRICS].observe(record)
    if (tripped := runtime.guard.observe(record)) is not None:
        _trip(app, *tripped)


def _trip(app: web.Application, route: Route, arm: str, verdict: Verdict) -> None:
    """The guard proved the canary worse: it goes to weight 0 (live.py), said once in the log and metrics."""
    fields = {"statistic": verdict.statistic, "evidence": verdict.wealth, "threshold": verdict.threshold,
              "discordant_pairs": verdict.discordant_pairs, "canary_worse": verdict.canary_worse,
              "pairs": verdict.pairs, "confidence": route.guard.confidence if route.guard else None}
    app[LOG].event("guard", route=route.name, arm=arm, control=route.arms[0].name, action="weight_zero", **fields)
    app[METRICS].guard_trips.labels(route.name, arm, verdict.statistic).inc()
    app[METRICS].guard_tripped.labels(route.name, arm).set(1)

    async def write() -> None:
        try:
            await app[LIVE].trip(route, arm, fields)
        except Exception as exc:  # the store is down: this worker's own state still drops the arm
            app[LIVE].states[route.name] = with_trip(app[LIVE].state(route), route, arm, fields)
            _store_down(app, type(exc).__name__)

    task = asyncio.create_task(write())
    app[BACKGROUND].add(task)
    task.add_done_callback(app[BACKGROUND].discard)


def _tokens_used(record: RequestRecord) -> int | None:
    if record.usage_source == "none" and record.outcome != "ok":
        return 0  # nothing was generated
    if record.prompt_tokens is None and record.completion_tokens is None:
        return None  # unknown: the reservation stands
    return (record.prompt_tokens or 0) + (record.completion_tokens or 0)
