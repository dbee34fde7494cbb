"""Retries and fallback before the first byte, explicit errors after it, timeouts,
heartbeats, sticky arms: driven through the mock's fault modes."""

from __future__ import annotations

import textwrap
import time
import uuid
from collections.abc import Iterator

import aiohttp
import openai
import orjson
import pytest

from gateway.mock import mock_text
from gateway.sse import SSEParser

from .conftest import Gateway, Process, start_gateway

MESSAGES = [{"role": "user", "content": "hi"}]
SHORT = "timeouts = { connect_s = 1, first_token_s = 0.5, idle_s = 0.6, total_s = 8 }"
RETRY = "retry = { attempts = 2, backoff_base_ms = 10, backoff_cap_ms = 1500 }"


@pytest.fixture(scope="module")
def gw(mock_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    mock = mock_upstream.url
    text = textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        port = 0
        heartbeat_s = 0.15
        allow_arm_override = true

        [providers.flaky]
        dialect = "openai"
        base_url = "{mock}/flaky/v1"
        forward_headers = ["x-mock-"]
        {SHORT}
        {RETRY}

        [providers.flaky-an]
        dialect = "anthropic"
        base_url = "{mock}/flaky-an"
        forward_headers = ["x-mock-"]
        {SHORT}
        {RETRY}

        [providers.cheap]
        dialect = "openai"
        base_url = "{mock}/cheap/v1"
        forward_headers = ["x-mock-"]
        {SHORT}

        [providers.slow-heartbeat]
        dialect = "openai"
        base_url = "{mock}/slow/v1"
        forward_headers = ["x-mock-"]
        timeouts = {{ first_token_s = 2, idle_s = 2, total_s = 10 }}

        [providers.short-deadline]
        dialect = "openai"
        base_url = "{mock}/short/v1"
        forward_headers = ["x-mock-"]
        timeouts = {{ first_token_s = 5, idle_s = 5, total_s = 1 }}
        retry = {{ attempts = 3, backoff_base_ms = 10, backoff_cap_ms = 5000 }}

        [providers.dead]
        dialect = "openai"
        base_url = "http://127.0.0.1:9/v1"
        {SHORT}
        {RETRY}

        [routes.flaky]
        arms = [{{ name = "only", provider = "flaky", model = "flaky-model", weight = 100 }}]
        fallback = [{{ provider = "cheap", model = "cheap-model" }}]

        [routes.flaky-an]
        arms = [{{ name = "only", provider = "flaky-an", model = "flaky-an-model", weight = 100 }}]
        fallback = [{{ provider = "cheap", model = "cheap-model" }}]

        [routes.flaky-alone]
        arms = [{{ name = "only", provider = "flaky", model = "flaky-model", weight = 100 }}]

        [routes.dead-first]
        arms = [{{ name = "only", provider = "dead", model = "m", weight = 100 }}]
        fallback = [{{ provider = "cheap", model = "cheap-model" }}]

        [routes.heartbeat]
        arms = [{{ name = "only", provider = "slow-heartbeat", model = "m", weight = 100 }}]

        [routes.deadline]
        arms = [{{ name = "only", provider = "short-deadline", model = "m", weight = 100 }}]
        fallback = [{{ provider = "cheap", model = "cheap-model" }}]

        [routes.ab]
        salt = "ab-test"
        arms = [
          {{ name = "control", provider = "cheap", model = "cheap-model", weight = 50 }},
          {{ name = "canary", provider = "flaky", model = "flaky-model", weight = 50 }},
        ]

        [pricing.cheap-model]
        input_per_mtok = 0.28
        output_per_mtok = 0.42
        """)
    gateway = start_gateway(tmp_path_factory.mktemp("resilience"), text)
    yield gateway
    gateway.stop()


def fault(spec: str, scope: str | None = None, **knobs: str) -> dict[str, str]:
    """Headers for a fault that hits only the first attempts (key makes the count per test)."""
    headers = {"X-Mock-Fault": spec.replace("KEY", uuid.uuid4().hex), "X-Mock-Tag": uuid.uuid4().hex}
    if scope:
        headers["X-Mock-Scope"] = scope
    headers.update({f"X-Mock-{k.replace('_', '-').title()}": v for k, v in knobs.items()})
    return headers


def sdk(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-test-client", max_retries=0)


def stream_text(gw: Gateway, route: str, headers: dict[str, str], request_id: str) -> str:
    stream = sdk(gw).chat.completions.create(model=route, messages=MESSAGES, stream=True,
                                             extra_headers={**headers, "X-Request-Id": request_id})
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


async def raw_stream(gw: Gateway, path: str, body: dict, headers: dict[str, str]) -> tuple[int, list, bytes]:
    parser, events, raw = SSEParser(), [], b""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.url}{path}", json=body, headers=headers) as response:
            async for chunk in response.content.iter_any():
                raw += chunk
                events += parser.feed(chunk)
            return response.status, events, raw


# --- before the first byte: retry, then fall back --------------------------------------------

@pytest.mark.parametrize("route", ["flaky", "flaky-an"])
def test_503_then_success_is_retried_into_one_stream(gw: Gateway, mock_upstream: Process,
                                                     route: str, request_id: str) -> None:
    headers = fault("status=503;times=1;key=KEY", scope=route)
    assert stream_text(gw, route, headers, request_id) == mock_text(12)
    line = gw.log_for(request_id)
    assert (line["outcome"], line["attempts"], line["fallback_used"], line["provider"]) == ("ok", 2, False, route)
    assert line["attempt_errors"] == [f"{route}:upstream_error"]
    assert [r["status"] for r in mock_upstream.mock_records(headers["X-Mock-Tag"])] == [503, 200]


def test_429_retry_after_is_honoured_before_the_retry(gw: Gateway, mock_upstream: Process,
                                                      request_id: str) -> None:
    headers = fault("status=429;retry_after=1;times=1;key=KEY", scope="flaky")
    assert stream_text(gw, "flaky", headers, request_id) == mock_text(12)
    first, second = mock_upstream.mock_records(headers["X-Mock-Tag"])
    assert second["started"] - first["started"] >= 1.0  # the provider asked for a second; cap is 1.5 s
    assert gw.log_for(request_id)["attempts"] == 2


async def test_429_on_every_attempt_returns_429_with_retry_after(gw: Gateway, request_id: str) -> None:
    headers = {**fault("status=429;retry_after=0", scope="flaky"), "X-Request-Id": request_id}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.url}/v1/chat/completions", headers=headers,
                                json={"model": "flaky-alone", "messages": MESSAGES, "stream": True}) as response:
            assert response.status == 429
            assert "Retry-After" in response.headers
            assert (await response.json())["error"]["code"] == "upstream_rate_limited"
    assert gw.log_for(request_id)["attempts"] == 2


def test_connect_refused_falls_back_to_the_next_provider(gw: Gateway, request_id: str) -> None:
    assert stream_text(gw, "dead-first", {}, request_id) == mock_text(12)
    line = gw.log_for(request_id)
    assert (line["provider"], line["fallback_used"], line["attempts"]) == ("cheap", True, 3)
    assert line["attempt_errors"] == ["dead:upstream_unreachable"] * 2
    assert line["cost_usd"] is not None  # priced at the fallback's model


def test_stall_before_first_token_times_out_and_falls_back(gw: Gateway, request_id: str) -> None:
    headers = fault("stall=first", scope="flaky")
    assert stream_text(gw, "flaky", headers, request_id) == mock_text(12)
    line = gw.log_for(request_id)
    assert line["attempt_errors"] == ["flaky:timeout_first_token"] * 2
    assert (line["provider"], line["outcome"]) == ("cheap", "ok")


def test_client_errors_from_upstream_are_not_retried(gw: Gateway, mock_upstream: Process,
                                                     request_id: str) -> None:
    headers = fault("status=400", scope="flaky")
    with pytest.raises(openai.BadRequestError):
        stream_text(gw, "flaky", headers, request_id)
    assert len(mock_upstream.mock_records(headers["X-Mock-Tag"])) == 1
    line = gw.log_for(request_id)
    assert (line["status"], line["outcome"], line["attempts"]) == (400, "client_error", 1)


def test_every_provider_failing_is_a_502_after_the_whole_chain(gw: Gateway, request_id: str) -> None:
    headers = fault("status=500")  # no scope: the fallback fails too
    with pytest.raises(openai.APIStatusError) as raised:
        stream_text(gw, "flaky", headers, request_id)
    assert raised.value.status_code == 502
    line = gw.log_for(request_id)
    assert (line["attempts"], line["outcome"], line["fallback_used"]) == (4, "upstream_error", True)


def test_a_retry_that_cannot_fit_in_the_deadline_is_skipped_for_the_fallback(
        gw: Gateway, mock_upstream: Process, request_id: str) -> None:
    # The provider asks for 5 s before a retry; the request has 1 s in all: go straight to the fallback.
    headers = fault("status=503;retry_after=5", scope="short")
    started = time.monotonic()
    assert stream_text(gw, "deadline", headers, request_id) == mock_text(12)
    assert time.monotonic() - started < 1.0
    line = gw.log_for(request_id)
    assert (line["attempts"], line["provider"], line["outcome"]) == (2, "cheap", "ok")


def test_retries_and_fallbacks_never_stack_past_the_total_deadline(gw: Gateway, request_id: str) -> None:
    headers = fault("status=503;retry_after=5")  # every provider, every attempt
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as raised:
        stream_text(gw, "deadline", headers, request_id)
    assert raised.value.status_code == 502
    assert time.monotonic() - started < 1.0  # not 5 s of Retry-After per attempt
    assert gw.log_for(request_id)["attempts"] == 2


def test_a_stalled_upstream_hits_the_total_deadline(gw: Gateway, request_id: str) -> None:
    # first_token_s is 5 s but the request has 1 s in all.
    with pytest.raises(openai.APIStatusError) as raised:
        stream_text(gw, "deadline", fault("stall=first", scope="short"), request_id)
    assert raised.value.status_code == 504
    line = gw.log_for(request_id)
    assert (line["outcome"], line["error_code"], line["attempts"]) == ("timeout_total", "timeout_total", 1)
    assert 1000 <= line["latency_ms"] < 2000


# --- after the first byte: never retried, ended with an explicit error ------------------------

def test_drop_after_three_tokens_gives_three_tokens_then_an_error(gw: Gateway, mock_upstream: Process,
                                                                  request_id: str) -> None:
    headers = fault("drop_after=3", scope="flaky")
    received: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in sdk(gw).chat.completions.create(model="flaky", messages=MESSAGES, stream=True,
                                                     extra_headers={**headers, "X-Request-Id": request_id}):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert "".join(received) == mock_text(3)
    assert len(mock_upstream.mock_records(headers["X-Mock-Tag"])) == 1  # no retry after the first byte
    line = gw.log_for(request_id)
    assert (line["status"], line["outcome"], line["attempts"]) == (200, "upstream_error", 1)
    assert (line["completion_tokens"], line["usage_source"]) == (3, "estimated")


async def test_drop_on_the_browser_stream_ends_with_an_error_event(gw: Gateway) -> None:
    status, events, _ = await raw_stream(gw, "/v1/stream/chat", {"prompt": "hi", "model": "flaky"},
                                         fault("drop_after=3", scope="flaky"))
    assert status == 200
    assert [e.event for e in events] == ["message"] * 3 + ["error"]
    assert orjson.loads(events[-1].data)["error"]["code"] == "upstream_error"


@pytest.mark.parametrize("route", ["flaky", "flaky-an"])
async def test_upstream_error_event_mid_stream_is_relayed_as_an_error(gw: Gateway, route: str,
                                                                       request_id: str) -> None:
    headers = {**fault("error_after=2", scope=route), "X-Request-Id": request_id}
    _, events, _ = await raw_stream(gw, "/v1/chat/completions",
                                    {"model": route, "messages": MESSAGES, "stream": True}, headers)
    error = orjson.loads(events[-1].data)["error"]
    assert error["code"] == "upstream_error"
    assert all(e.data != "[DONE]" for e in events)
    assert gw.log_for(request_id)["outcome"] == "upstream_error"


@pytest.mark.parametrize("route", ["flaky", "flaky-an"])
async def test_stream_without_terminator_is_reported_truncated_not_done(gw: Gateway, route: str,
                                                                         request_id: str) -> None:
    headers = {**fault("truncate_after=3", scope=route), "X-Request-Id": request_id}
    _, events, _ = await raw_stream(gw, "/v1/chat/completions",
                                    {"model": route, "messages": MESSAGES, "stream": True}, headers)
    assert all(e.data != "[DONE]" for e in events)
    assert orjson.loads(events[-1].data)["error"]["code"] == "upstream_truncated"
    line = gw.log_for(request_id)
    assert (line["outcome"], line["completion_tokens"]) == ("truncated", 3)


async def test_upstream_silence_mid_stream_is_an_idle_timeout(gw: Gateway, request_id: str) -> None:
    headers = {**fault("stall_after=2", scope="flaky"), "X-Request-Id": request_id}
    _, events, _ = await raw_stream(gw, "/v1/chat/completions",
                                    {"model": "flaky", "messages": MESSAGES, "stream": True}, headers)
    assert orjson.loads(events[-1].data)["error"]["code"] == "timeout_idle"
    line = gw.log_for(request_id)
    assert (line["outcome"], line["attempts"]) == ("timeout_idle", 1)


# --- heartbeats ----------------------------------------------------------------------------------

async def test_heartbeat_comments_fill_upstream_silence(gw: Gateway, request_id: str) -> None:
    headers = {"X-Mock-Tokens": "3", "X-Mock-Inter-Token-Delay-Ms": "700", "X-Request-Id": request_id}
    _, events, raw = await raw_stream(gw, "/v1/chat/completions",
                                      {"model": "heartbeat", "messages": MESSAGES, "stream": True}, headers)
    assert raw.count(b": keep-alive\n\n") >= 4  # two 700 ms gaps, 150 ms heartbeat
    assert "".join(orjson.loads(e.data)["choices"][0]["delta"].get("content", "")
                   for e in events if e.data != "[DONE]" and orjson.loads(e.data)["choices"]) == mock_text(3)
    assert gw.log_for(request_id)["outcome"] == "ok"


def test_sdk_ignores_heartbeats(gw: Gateway, request_id: str) -> None:
    headers = {"X-Mock-Tokens": "3", "X-Mock-Inter-Token-Delay-Ms": "400"}
    assert stream_text(gw, "heartbeat", headers, request_id) == mock_text(3)


# --- sticky arms -------------------------------------------------------------------------------

async def test_same_user_gets_the_same_arm_every_time(gw: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        for user in ("alice", "bob", "carol", "dave"):
            arms = set()
            for _ in range(3):
                async with session.post(f"{gw.url}/v1/chat/completions",
                                        json={"model": "ab", "messages": MESSAGES, "user": user}) as response:
                    arms.add(response.headers["X-Gateway-Arm"])
            assert len(arms) == 1


async def test_user_key_source_is_logged(gw: Gateway) -> None:
    cases = [({"user": "u1"}, {}, "user"), ({}, {"X-User-Id": "u2"}, "header"),
             ({}, {"Authorization": "Bearer sk-gateway-key-1"}, "api_key"), ({}, {}, "random")]
    async with aiohttp.ClientSession() as session:
        for body, headers, source in cases:
            rid = uuid.uuid4().hex
            async with session.post(f"{gw.url}/v1/chat/completions",
                                    json={"model": "ab", "messages": MESSAGES, **body},
                                    headers={**headers, "X-Request-Id": rid}) as response:
                assert response.status == 200
            line = gw.log_for(rid)
            assert line["user_key_source"] == source
            assert "u1" not in line["user_key_hash"] and "sk-gateway" not in orjson.dumps(line).decode()


async def test_arm_override_header_picks_the_arm_when_enabled(gw: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        for arm in ("control", "canary"):
            async with session.post(f"{gw.url}/v1/chat/completions", headers={"X-Gateway-Arm-Override": arm},
                                    json={"model": "ab", "messages": MESSAGES, "user": "alice"}) as response:
                assert response.headers["X-Gateway-Arm"] == arm
        async with session.post(f"{gw.url}/v1/chat/completions", headers={"X-Gateway-Arm-Override": "nope"},
                                json={"model": "ab", "messages": MESSAGES}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "unknown_arm"


async def test_arm_override_header_is_ignored_when_disabled(gateway: Gateway) -> None:
    # The shared gateway fixture's config has allow_arm_override = true; check the default config.
    from gateway.config import load_config
    assert load_config().server.allow_arm_override is False
