"""Runtime weights and guard state (gateway/live.py): the pure changes, and the store they live in."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import Arm, Route, load_config
from gateway.live import (
    LiveRoutes,
    RouteState,
    WeightsRefused,
    configured,
    parse_weights,
    with_trip,
    with_weights,
)
from gateway.routing import bucket, choose_arm
from gateway.store import MemoryStore

ROUTE = Route("chat", "salt", (Arm("control", "a", "m", 9900), Arm("canary", "b", "m", 100)))


def test_weights_are_percentages_for_every_arm_summing_to_100() -> None:
    assert parse_weights(ROUTE, {"control": 50, "canary": 50}) == {"control": 5000, "canary": 5000}
    for bad in ({"control": 100}, {"control": 60, "canary": 50}, {"control": 90, "canary": "10"},
                {"control": 99.995, "canary": 0.005}, [90, 10]):
        with pytest.raises(ValueError):
            parse_weights(ROUTE, bad)


def test_ramping_the_canary_only_moves_control_users_into_it() -> None:
    users = [f"user-{n}" for n in range(3000)]
    previous: set[str] = set()
    for percent in (1, 10, 50, 100):
        state = with_weights(configured(ROUTE), parse_weights(ROUTE, {"control": 100 - percent, "canary": percent}))
        canary = {u for u in users if choose_arm(ROUTE, bucket(ROUTE.salt, u), state.as_tuple(ROUTE)).name == "canary"}
        assert previous <= canary  # nobody left the canary
        previous = canary
    assert previous == set(users)


def test_a_trip_sends_the_canarys_share_to_the_control_and_keeps_why() -> None:
    state = with_weights(configured(ROUTE), {"control": 9000, "canary": 1000})
    tripped = with_trip(state, ROUTE, "canary", {"statistic": "error_rate"})
    assert dict(tripped.weights) == {"control": 10000, "canary": 0}
    assert tripped.tripped == {"canary": {"statistic": "error_rate"}} and tripped.version == state.version + 1
    assert all(choose_arm(ROUTE, b, tripped.as_tuple(ROUTE)).name == "control" for b in range(0, 10000, 7))


def test_only_a_weight_above_zero_turns_a_tripped_arm_back_on() -> None:
    tripped = with_trip(configured(ROUTE), ROUTE, "canary", {"statistic": "ttft"})
    assert "canary" in with_weights(tripped, {"control": 10000, "canary": 0}).tripped
    assert with_weights(tripped, {"control": 9900, "canary": 100}).tripped == {}


def test_a_route_state_survives_its_json() -> None:
    state = with_trip(configured(ROUTE), ROUTE, "canary", {"statistic": "ttft", "evidence": 41.2})
    assert RouteState.from_json(state.to_json()) == state


def test_live_weights_live_in_the_store_and_routing_reads_them() -> None:
    config = load_config()
    route = config.routes["chat"]
    live = LiveRoutes(config, MemoryStore())
    assert live.weights(route) is None  # the configured ones
    asyncio.run(live.set_weights(route, {"control": 50, "canary": 50}))
    assert live.weights(route) == (5000, 5000)


def test_several_workers_without_a_shared_store_refuse_runtime_weights() -> None:
    config = load_config()
    live = LiveRoutes(config, MemoryStore(), workers=2)
    with pytest.raises(WeightsRefused) as refused:
        asyncio.run(live.set_weights(config.routes["chat"], {"control": 50, "canary": 50}))
    assert refused.value.status == 409 and "redis_url" in refused.value.message
