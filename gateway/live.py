"""Runtime route weights and guard state: what routing reads instead of the config's weights.

A route's live state is one small JSON document (its weights in basis points,
the arms the guard tripped and why, a version) kept in the store (store.py):
in this process, or in Redis, where every worker of every instance polls it
every `POLL_S` (so a change is seen everywhere within a second). A route with
no document uses its configured weights.

The changes themselves are pure functions of the state (`with_weights`,
`with_trip`), tested without a store. Two rules:

- Weights keep stickiness monotone: arms own consecutive bucket ranges in
  config order (routing.py), so with the canary last, raising its weight only
  moves control users into it, and a weight of 0 sends all its users to the
  control.
- A tripped arm goes to weight 0, its share to the first arm (the control).
  Only a person turns it back on (a weight above 0 in `PUT .../weights`); the
  guard never does.

Without a shared store and with `--workers N > 1`, each worker would hold its
own weights: runtime weight changes are refused (`set_weights` raises).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .config import BASIS_POINTS, Config, Route
from .store import Store, StoreUnavailable

POLL_S = 0.5


class WeightsRefused(Exception):
    """A runtime weight change that cannot be made; the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True, slots=True)
class RouteState:
    weights: Mapping[str, int]  # basis points per arm, in config order
    tripped: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # arm -> the guard's verdict
    version: int = 0

    def as_tuple(self, route: Route) -> tuple[int, ...]:
        return tuple(self.weights.get(arm.name, 0) for arm in route.arms)

    def to_json(self) -> bytes:
        return orjson.dumps({"weights": dict(self.weights), "tripped": dict(self.tripped), "version": self.version})

    @classmethod
    def from_json(cls, raw: bytes) -> RouteState:
        doc = orjson.loads(raw)
        return cls({k: int(v) for k, v in doc["weights"].items()}, doc.get("tripped", {}), int(doc["version"]))


def configured(route: Route) -> RouteState:
    return RouteState({arm.name: arm.weight_bp for arm in route.arms})


def parse_weights(route: Route, given: object) -> dict[str, int]:
    """Percentages for every arm of the route, summing to 100, to basis points; ValueError says what is wrong.

        >>> from gateway.config import Arm, Route
        >>> route = Route("chat", "s", (Arm("control", "a", "m", 9900), Arm("canary", "b", "m", 100)))
        >>> parse_weights(route, {"control": 90, "canary": 10})
        {'control': 9000, 'canary': 1000}
    """
    names = [arm.name for arm in route.arms]
    if not isinstance(given, dict) or sorted(given) != sorted(names):
        raise ValueError(f"expected {{\"weights\": {{...}}}} with a percentage for each arm: {', '.join(names)}")
    out: dict[str, int] = {}
    for name in names:
        value = given[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
            raise ValueError(f"the weight of {name!r} must be a percentage from 0 to 100, got {value!r}")
        bp = value * BASIS_POINTS / 100
        if not math.isclose(bp, round(bp)):
            raise ValueError(f"the weight of {name!r} is finer than one basis point (0.01%)")
        out[name] = round(bp)
    if sum(out.values()) != BASIS_POINTS:
        raise ValueError(f"weights must sum to 100, got {sum(out.values()) / 100:g}")
    return out


def with_weights(state: RouteState, weights: Mapping[str, int]) -> RouteState:
    """A person's change: the new weights; an arm they give a weight above 0 is no longer tripped."""
    tripped = {arm: why for arm, why in state.tripped.items() if weights.get(arm, 0) == 0}
    return RouteState(dict(weights), tripped, state.version + 1)


def with_trip(state: RouteState, route: Route, arm: str, verdict: Mapping[str, Any]) -> RouteState:
    """The guard's change: the arm to 0, its share to the control (the first arm)."""
    weights = dict(state.weights)
    control = route.arms[0].name
    weights[control] = weights.get(control, 0) + weights.get(arm, 0)
    weights[arm] = 0
    return RouteState(weights, {**state.tripped, arm: dict(verdict)}, state.version + 1)


class LiveRoutes:
    """Each route's live state, read from and written to the store."""

    def __init__(self, config: Config, store: Store, *, workers: int = 1) -> None:
        self.config, self.store, self.workers = config, store, workers
        self.states: dict[str, RouteState] = {}  # only routes with a document
        self.polled_at: float | None = None

    @property
    def shared(self) -> bool:
        return self.store.kind != "memory"

    def state(self, route: Route) -> RouteState:
        state = self.states.get(route.name)
        if state is None or sorted(state.weights) != sorted(arm.name for arm in route.arms):
            return configured(route)  # none yet, or the config's arms changed since it was written
        return state

    def weights(self, route: Route) -> tuple[int, ...] | None:
        """What routing uses instead of the configured weights (None: the configured ones)."""
        return self.state(route).as_tuple(route) if route.name in self.states else None

    async def refresh(self) -> None:
        for name in self.config.routes:
            raw = await self.store.read_doc(f"route:{name}")
            if raw is not None:
                self.states[name] = RouteState.from_json(raw)
        self.polled_at = time.monotonic()

    async def poll(self) -> None:
        """Every POLL_S, for the life of the app (shared store only)."""
        while True:
            try:
                await self.refresh()
            except StoreUnavailable:
                pass  # keep the last known state; the limiter reports the outage
            await asyncio.sleep(POLL_S)

    async def _write(self, route: Route, state: RouteState) -> RouteState:
        await self.store.write_doc(f"route:{route.name}", state.to_json())
        self.states[route.name] = state
        return state

    async def set_weights(self, route: Route, given: object) -> RouteState:
        if self.workers > 1 and not self.shared:
            raise WeightsRefused(409, f"this gateway runs {self.workers} workers without a shared store: each "
                                      "would keep its own weights. Configure [store] redis_url, or run one worker")
        try:
            weights = parse_weights(route, given)
        except ValueError as exc:
            raise WeightsRefused(400, str(exc)) from None
        if self.shared:
            await self.refresh()  # build on the newest state: another instance may have tripped an arm
        return await self._write(route, with_weights(self.state(route), weights))

    async def trip(self, route: Route, arm: str, verdict: Mapping[str, Any]) -> RouteState:
        if self.shared:
            await self.refresh()
        if arm in self.state(route).tripped:
            return self.state(route)
        return await self._write(route, with_trip(self.state(route), route, arm, verdict))

