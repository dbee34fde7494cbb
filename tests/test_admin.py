"""The admin API and the live canary guard end to end: real gateways, the mock, a real redis-server."""

from __future__ import annotations

import functools
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from .conftest import Gateway, Process, Redis, free_port, start_gateway

ADMIN_KEY = "adm-" + "k" * 40
ENV = {"GW_ADMIN_KEY": ADMIN_KEY}


def admin_config(mock: str, extra: str = "") -> str:
    return textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        port = 0

        [admin]
        key_env = "GW_ADMIN_KEY"

        [providers.ctl]
        dialect = "openai"
        base_url = "{mock}/ctl/v1"
        forward_headers = ["x-mock-"]
        retry = {{ attempts = 1 }}

        [providers.can]
        dialect = "openai"
        base_url = "{mock}/can/v1"
        forward_headers = ["x-mock-"]
        retry = {{ attempts = 1 }}

        [routes.chat]
        salt = "admin-test"
        arms = [
          {{ name = "control", provider = "ctl", model = "m", weight = 50 }},
          {{ name = "canary", provider = "can", model = "m", weight = 50 }},
        ]
        guard = {{ confidence = 0.999 }}  # an A/A run trips at most 0.1% of the time: the tests do not flake
        """) + textwrap.dedent(extra)


@pytest.fixture(scope="module")
def gw(mock_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("admin"), admin_config(mock_upstream.url), env=ENV)
    yield gateway
    gateway.stop()


def call(gw: Gateway, method: str, path: str, body: object = None, key: str | None = ADMIN_KEY
         ) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(f"{gw.url}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


@functools.cache
def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)


def arm_of(gw: Gateway, user: str, headers: dict[str, str] | None = None) -> str:
    client = sdk(gw.url)
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], user=user, extra_headers=headers or {})
        return raw.headers["X-Gateway-Arm"]
    except openai.APIStatusError as error:
        return error.response.headers["X-Gateway-Arm"]


def arms(view: dict[str, Any], route: str = "chat") -> dict[str, dict[str, Any]]:
    found = next(r for r in view["routes"] if r["route"] == route)
    return {arm["name"]: arm for arm in found["arms"]}


def test_without_an_admin_key_configured_the_admin_api_is_a_404(gateway: Gateway) -> None:
    assert call(gateway, "GET", "/admin/routes")[0] == 404


def test_the_admin_api_refuses_a_missing_or_wrong_key(gw: Gateway) -> None:
    assert call(gw, "GET", "/admin/routes", key=None)[0] == 401
    status, body = call(gw, "GET", "/admin/routes", key="adm-wrong")
    assert status == 401 and body["error"]["code"] == "invalid_admin_key"


def test_get_routes_shows_configured_and_live_weights_and_live_figures(gw: Gateway) -> None:
    for n in range(6):
        arm_of(gw, f"figures-{n}")
    status, view = call(gw, "GET", "/admin/routes")
    assert status == 200
    chat = arms(view)
    assert chat["control"]["configured_weight"] == 50 and chat["control"]["live_weight"] is not None
    assert sum(chat[a]["live"]["requests"] for a in chat) >= 6
    assert {"error_rate", "ttft_p50_ms", "ttft_p95_ms"} <= set(chat["control"]["live"])


def test_a_weight_ramp_applies_without_a_restart_and_keeps_users_sticky(gw: Gateway) -> None:
    users = [f"ramp-{n}" for n in range(30)]
    previous: set[str] = set()
    for percent in (1, 10, 50, 100):
        status, _ = call(gw, "PUT", "/admin/routes/chat/weights",
                         {"weights": {"control": 100 - percent, "canary": percent}})
        assert status == 200
        canary = {u for u in users if arm_of(gw, u) == "canary"}
        assert previous <= canary
        previous = canary
    assert previous == set(users)
    assert call(gw, "PUT", "/admin/routes/chat/weights", {"weights": {"control": 50, "canary": 50}})[0] == 200


def test_bad_weights_are_a_400_and_an_unknown_route_a_404(gw: Gateway) -> None:
    status, body = call(gw, "PUT", "/admin/routes/chat/weights", {"weights": {"control": 70, "canary": 10}})
    assert status == 400 and "sum to 100" in body["error"]["message"]
    assert call(gw, "PUT", "/admin/routes/nope/weights", {"weights": {}})[0] == 404


def test_a_failing_canary_trips_the_guard_goes_to_weight_0_and_stays_there_until_a_person_says(
        mock_upstream: Process, tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, admin_config(mock_upstream.url), env=ENV)
    try:
        failing = {"X-Mock-Fault": "status=500", "X-Mock-Scope": "can"}  # the canary's provider fails, always
        canary_users = []
        for n in range(200):
            if arm_of(gw, f"guard-{n}", failing) == "canary":
                canary_users.append(f"guard-{n}")
            if gw.edge_events("guard"):
                break
        time.sleep(0.2)
        events = gw.edge_events("guard")
        assert len(events) == 1  # it tripped, once, and said why
        event = events[0]
        assert (event["route"], event["arm"], event["control"], event["statistic"]) == (
            "chat", "canary", "control", "error_rate")
        assert event["evidence"] >= event["threshold"] == 2000.0
        _, view = call(gw, "GET", "/admin/routes")
        canary = arms(view)["canary"]
        assert canary["live_weight"] == 0 and canary["tripped"]["statistic"] == "error_rate"
        assert canary["guard"]["tripped"] is True
        assert {arm_of(gw, u) for u in canary_users} == {"control"}  # its users went to the control
        metrics = urllib.request.urlopen(f"{gw.url}/metrics").read().decode()
        assert 'gateway_guard_tripped{arm="canary",route="chat"} 1.0' in metrics
        # A person turns it back on; the guard never does.
        status, body = call(gw, "PUT", "/admin/routes/chat/weights", {"weights": {"control": 50, "canary": 50}})
        assert status == 200 and arms(body)["canary"]["tripped"] is None
        assert arms(body)["canary"]["guard"]["pairs"] == 0  # its evidence starts afresh
    finally:
        gw.stop()


def test_a_canary_as_good_as_the_control_does_not_trip(gw: Gateway) -> None:
    for n in range(60):
        arm_of(gw, f"healthy-{n}")
    assert gw.edge_events("guard") == []


def test_several_workers_without_a_shared_store_refuse_runtime_weights_with_a_clear_error(
        mock_upstream: Process, tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, admin_config(mock_upstream.url), env=ENV, args=("--workers", "2"))
    try:
        status, body = call(gw, "PUT", "/admin/routes/chat/weights", {"weights": {"control": 90, "canary": 10}})
        assert status == 409 and body["error"]["code"] == "weights_refused"
        assert "without a shared store" in body["error"]["message"]
    finally:
        gw.stop()


def test_with_redis_every_instance_sees_a_weight_change_within_a_second(
        mock_upstream: Process, redis_server: Redis, tmp_path: Path) -> None:
    store = f'\n[store]\nredis_url = "{redis_server.url}"\nprefix = "{uuid.uuid4().hex}"\n'
    text = admin_config(mock_upstream.url, store)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = start_gateway(tmp_path / "one", text, env=ENV)
    two = start_gateway(tmp_path / "two", text, env=ENV, args=("--workers", "2"))
    try:
        status, _ = call(one, "PUT", "/admin/routes/chat/weights", {"weights": {"control": 0, "canary": 100}})
        assert status == 200
        time.sleep(1.0)
        # Every worker of the other instance: new connections spread over both.
        users = [f"shared-{n}" for n in range(12)]
        assert {arm_of(two, u) for u in users} == {"canary"}
        _, view = call(two, "GET", "/admin/routes")
        assert view["shared"] is True and arms(view)["canary"]["live_weight"] == 100
    finally:
        one.stop()
        two.stop()


def test_with_redis_a_trip_in_one_instance_is_seen_by_every_other(
        mock_upstream: Process, redis_server: Redis, tmp_path: Path) -> None:
    store = f'\n[store]\nredis_url = "{redis_server.url}"\nprefix = "{uuid.uuid4().hex}"\n'
    text = admin_config(mock_upstream.url, store)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = start_gateway(tmp_path / "one", text, env=ENV)
    two = start_gateway(tmp_path / "two", text, env=ENV)
    try:
        failing = {"X-Mock-Fault": "status=500", "X-Mock-Scope": "can"}
        for n in range(200):
            arm_of(one, f"trip-{n}", failing)
            if one.edge_events("guard"):
                break
        assert one.edge_events("guard") and not two.edge_events("guard")  # one judged; two never saw a request
        time.sleep(1.0)
        _, view = call(two, "GET", "/admin/routes")
        canary = arms(view)["canary"]
        assert canary["live_weight"] == 0 and canary["tripped"]["statistic"] == "error_rate"
        assert {arm_of(two, f"trip-{n}") for n in range(20)} == {"control"}
    finally:
        one.stop()
        two.stop()


def test_a_canary_with_twice_the_control_ttft_trips_on_ttft(tmp_path: Path) -> None:
    port = free_port()  # the gateway's own built-in mock, with a 50 ms and a 100 ms profile
    text = admin_config(f"http://127.0.0.1:{port}", textwrap.dedent(f"""
        [mock]
        host = "127.0.0.1"
        port = {port}
        tokens = 3

        [mock.profiles.ctl]
        first_token_delay_ms = 50
        inter_token_delay_ms = 1

        [mock.profiles.can]
        first_token_delay_ms = 100
        inter_token_delay_ms = 1
        """))
    gw = start_gateway(tmp_path, text, env=ENV)
    try:
        for n in range(300):
            arm_of(gw, f"slow-{n}")
            if gw.edge_events("guard"):
                break
        [event] = gw.edge_events("guard")
        assert (event["arm"], event["statistic"]) == ("canary", "ttft")
        _, view = call(gw, "GET", "/admin/routes")
        assert arms(view)["canary"]["live_weight"] == 0
        assert arms(view)["canary"]["live"]["ttft_p50_ms"] > arms(view)["control"]["live"]["ttft_p50_ms"]
    finally:
        gw.stop()
