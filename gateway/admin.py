"""The admin API: live route weights and the canary guard's state, behind an admin key.

    GET /admin/routes                    every route: configured and live weights, guard state,
                                         each arm's live figures over its recent requests
    PUT /admin/routes/{route}/weights    {"weights": {"control": 90, "canary": 10}} (percent)

The endpoints exist only when `[admin] key_env` names an environment variable
holding a key (otherwise every /admin path is a 404, as for any unknown path).
The key is presented as `Authorization: Bearer <key>` and compared in
constant time. nginx never proxies /admin from its public server block
(nginx/templates/gateway.conf.template).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from .canary import CanaryGuard
from .config import Config, Route
from .errors import GatewayError
from .live import LiveRoutes, WeightsRefused
from .reload import RUNTIME

LIVE = web.AppKey("live", LiveRoutes)


def add_routes(app: web.Application, config: Config) -> None:
    if config.admin.key is None:
        return
    app.router.add_get("/admin/routes", _admin(routes))
    app.router.add_put("/admin/routes/{route}/weights", _admin(put_weights))


def _admin(handler: Callable[[web.Request], Awaitable[web.Response]]
           ) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def checked(request: web.Request) -> web.Response:
        expected = request.app[LIVE].config.admin.key or ""
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        try:
            # surrogateescape: header bytes that are not UTF-8 compare as bytes, never a 500
            if not expected or not hmac.compare_digest(presented.encode("utf-8", "surrogateescape"),
                                                       expected.encode("utf-8", "surrogateescape")):
                raise GatewayError(401, "invalid_admin_key", "The admin API needs the admin key "
                                                             "(Authorization: Bearer <key>)")
            return await handler(request)
        except GatewayError as error:  # the OpenAI error shape, as everywhere else
            return web.Response(body=error.json(), status=error.status, content_type="application/json")

    checked.__name__ = handler.__name__
    return checked


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def route_view(route: Route, live: LiveRoutes, guard: CanaryGuard) -> dict[str, Any]:
    state = live.state(route)
    arms = []
    for arm in route.arms:
        arms.append({"name": arm.name, "provider": arm.provider, "model": arm.model,
                     "configured_weight": arm.weight_bp / 100, "live_weight": state.weights.get(arm.name, 0) / 100,
                     "tripped": state.tripped.get(arm.name), "guard": guard.stats(route.name, arm.name),
                     "live": guard.arm_figures(route.name, arm.name)})
    return {"route": route.name, "version": state.version, "guarded": route.guard is not None,
            "guard_confidence": route.guard.confidence if route.guard else None, "arms": arms}


async def routes(request: web.Request) -> web.Response:
    app = request.app
    live, guard = app[LIVE], app[RUNTIME].runtime.guard
    return _json({"shared": live.shared, "routes": [route_view(r, live, guard) for r in live.config.routes.values()]})


async def put_weights(request: web.Request) -> web.Response:
    app = request.app
    live, guard = app[LIVE], app[RUNTIME].runtime.guard
    route = live.config.routes.get(request.match_info["route"])
    if route is None:
        raise GatewayError(404, "route_not_found", f"No route {request.match_info['route']!r}")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise GatewayError(400, "invalid_json", "The body is not JSON") from None
    try:
        state = await live.set_weights(route, body.get("weights") if isinstance(body, dict) else None)
    except WeightsRefused as refused:
        raise GatewayError(refused.status, "weights_refused", refused.message) from None
    guard.untrip(route.name, set(state.tripped))
    return _json({"shared": live.shared, "routes": [route_view(route, live, guard)]})
