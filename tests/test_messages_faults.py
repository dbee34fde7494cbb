"""POST /v1/messages when things go wrong: every fault the OpenAI endpoint handles has its
Anthropic-shaped equivalent and one log line; bad input gets Anthropic-shaped 4xx errors."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest

from gateway.mock import mock_text
from gateway.sse import Event, SSEParser

from .conftest import Gateway, Process
from .test_messages_api import MESSAGES, client, start_messages_gateway

BOTH = ["claude", "deepseek"]  # an Anthropic provider (events relayed), an OpenAI-compatible one (translated)
PROFILE = {"claude": "an", "deepseek": "oa"}


@pytest.fixture(scope="module")
def gw(mock_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # Heartbeats after 150 ms of silence: only the heartbeat test is that slow.
    gateway = start_messages_gateway(mock_upstream, tmp_path_factory.mktemp("messages-faults"), heartbeat_s=0.15)
    yield gateway
    gateway.stop()


def fault(request_id: str, spec: str, route: str | None = None, **knobs: str) -> dict[str, str]:
    """Headers for a mock fault (KEY: a counter of its own), scoped to the route's provider."""
    headers = {"X-Request-Id": request_id, "X-Mock-Tag": request_id,
               "X-Mock-Fault": spec.replace("KEY", uuid.uuid4().hex), **knobs}
    if route:
        headers["X-Mock-Scope"] = PROFILE[route]
    return headers


def body(route: str, stream: bool = True) -> dict[str, Any]:
    return {"model": route, "max_tokens": 100, "messages": MESSAGES, "stream": stream}


async def call(gw: Gateway, data: bytes | dict[str, Any], headers: dict[str, str] | None = None,
               method: str = "POST") -> tuple[int, dict[str, str], bytes]:
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"{gw.url}/v1/messages", data=payload,
                                   headers={"Content-Type": "application/json", **(headers or {})}) as response:
            return response.status, dict(response.headers), await response.read()


def events(raw: bytes) -> list[Event]:
    return SSEParser().feed(raw)


def error_of(raw: bytes) -> dict[str, Any]:
    """An Anthropic error body: exactly {"type": "error", "error": {"type", "message"}}."""
    data = orjson.loads(raw)
    assert data["type"] == "error" and set(data) == {"type", "error"} and set(data["error"]) == {"type", "message"}
    assert "Traceback" not in data["error"]["message"]
    error: dict[str, Any] = data["error"]
    return error


def text_of(stream_events: list[Event]) -> str:
    return "".join(orjson.loads(e.data)["delta"].get("text", "") for e in stream_events
                   if e.event == "content_block_delta")


# --- before the first byte: retried, or an error with its status ----------------------------------------

def test_a_503_then_success_is_retried_into_one_stream(gw: Gateway, mock_upstream: Process,
                                                       request_id: str) -> None:
    headers = fault(request_id, "status=503;times=1;key=KEY", "claude")
    with client(gw).messages.stream(model="claude", max_tokens=100, messages=MESSAGES,
                                    extra_headers=headers) as stream:
        assert "".join(stream.text_stream) == mock_text(12)
    assert [r["status"] for r in mock_upstream.mock_records(request_id)] == [503, 200]
    line = gw.log_for(request_id)
    assert (line["outcome"], line["attempts"], line["attempt_errors"]) == ("ok", 2, ["an:upstream_error"])


@pytest.mark.parametrize("route", BOTH)
def test_503s_on_every_attempt_are_a_502_api_error_the_sdk_raises(gw: Gateway, route: str,
                                                                  request_id: str) -> None:
    with pytest.raises(anthropic.InternalServerError) as raised:
        client(gw).messages.create(model=route, max_tokens=100, messages=MESSAGES,
                                   extra_headers=fault(request_id, "status=503", route))
    assert raised.value.status_code == 502 and raised.value.type == "api_error"
    line = gw.log_for(request_id)
    assert (line["status"], line["outcome"], line["error_code"], line["attempts"]) == (
        502, "upstream_error", "upstream_error", 2)


async def test_rate_limits_on_every_attempt_are_a_429_rate_limit_error_with_retry_after(
        gw: Gateway, request_id: str) -> None:
    status, headers, raw = await call(gw, body("claude"), fault(request_id, "status=429;retry_after=1", "claude"))
    assert (status, error_of(raw)["type"], headers["Retry-After"]) == (429, "rate_limit_error", "1")
    assert gw.log_for(request_id)["error_code"] == "upstream_rate_limited"


async def test_the_providers_refusing_the_gateways_key_is_not_the_clients_authentication_error(
        gw: Gateway, request_id: str) -> None:
    status, _, raw = await call(gw, body("claude"), {"X-Request-Id": request_id,
                                                     "X-Mock-Require-Key": "some-other-key"})
    assert (status, error_of(raw)["type"]) == (502, "api_error")
    assert gw.log_for(request_id)["error_code"] == "upstream_auth_failed"


@pytest.mark.parametrize("route", BOTH)
def test_no_first_token_in_time_is_a_504_timeout_error(gw: Gateway, route: str, request_id: str) -> None:
    headers = fault(request_id, "stall=first", route)
    with pytest.raises(anthropic.APIStatusError) as raised, \
            client(gw).messages.stream(model=route, max_tokens=100, messages=MESSAGES, extra_headers=headers):
        pass  # the SDK raises as the stream opens: nothing was sent before the status
    assert (raised.value.status_code, raised.value.type) == (504, "timeout_error")
    line = gw.log_for(request_id)
    assert (line["outcome"], line["attempts"]) == ("timeout_first_token", 2)


# --- after the first byte: the stream ends with an Anthropic error event -----------------------------------

@pytest.mark.parametrize("route", BOTH)
def test_a_drop_mid_stream_gives_three_tokens_then_an_error_the_sdk_raises(
        gw: Gateway, mock_upstream: Process, route: str, request_id: str) -> None:
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as raised:
        with client(gw).messages.stream(model=route, max_tokens=100, messages=MESSAGES,
                                        extra_headers=fault(request_id, "drop_after=3", route)) as stream:
            for text in stream.text_stream:
                received.append(text)
    assert "".join(received) == mock_text(3)
    assert raised.value.type == "api_error"
    assert len(mock_upstream.mock_records(request_id)) == 1  # never retried after the first byte
    line = gw.log_for(request_id)
    assert (line["status"], line["outcome"], line["attempts"]) == (200, "upstream_error", 1)
    assert (line["completion_tokens"], line["usage_source"]) == (3, "estimated")


@pytest.mark.parametrize(("spec", "error_type", "outcome"), [
    ("drop_after=3", "api_error", "upstream_error"),
    ("truncate_after=3", "api_error", "truncated"),
    ("error_after=3", "api_error", "upstream_error"),
    ("stall_after=3", "timeout_error", "timeout_idle"),
])
@pytest.mark.parametrize("route", BOTH)
async def test_a_failure_mid_stream_ends_it_with_one_anthropic_error_event(
        gw: Gateway, route: str, spec: str, error_type: str, outcome: str, request_id: str) -> None:
    status, _, raw = await call(gw, body(route), fault(request_id, spec, route))
    stream = events(raw)
    assert status == 200 and text_of(stream) == mock_text(3)
    assert [e.event for e in stream].count("error") == 1 and stream[-1].event == "error"
    assert error_of(stream[-1].data.encode())["type"] == error_type
    assert "message_stop" not in [e.event for e in stream]  # never dressed up as a clean end
    line = gw.log_for(request_id)
    assert (line["status"], line["outcome"], line["endpoint"]) == (200, outcome, "messages")


@pytest.mark.parametrize("route", BOTH)
async def test_a_client_that_goes_away_closes_the_upstream_and_is_logged_once(
        gw: Gateway, mock_upstream: Process, route: str, request_id: str) -> None:
    slow = {"X-Mock-Tokens": "200", "X-Mock-Inter-Token-Delay-Ms": "20"}
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{gw.url}/v1/messages", json=body(route),
                                      headers={"X-Request-Id": request_id, "X-Mock-Tag": request_id, **slow})
        seen = 0
        async for line in response.content:
            seen += b'"text_delta"' in line
            if seen == 3:
                break
        response.close()
    deadline = time.monotonic() + 5
    while mock_upstream.mock_records(request_id)[0]["ended"] is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert mock_upstream.mock_records(request_id)[0]["outcome"] == "client_closed"
    log = gw.log_for(request_id)
    assert (log["outcome"], log["client_disconnected"], log["status"]) == ("client_disconnected", True, 200)


@pytest.mark.parametrize("route", BOTH)
async def test_heartbeat_comments_fill_upstream_silence(gw: Gateway, route: str, request_id: str) -> None:
    slow = {"X-Request-Id": request_id, "X-Mock-Tokens": "3", "X-Mock-Inter-Token-Delay-Ms": "400"}
    status, _, raw = await call(gw, body(route), slow)
    assert status == 200 and raw.count(b": keep-alive\n\n") >= 2  # two 400 ms gaps, 150 ms heartbeat
    assert text_of(events(raw)) == mock_text(3) and events(raw)[-1].event == "message_stop"


def test_the_sdk_reads_through_heartbeats(gw: Gateway) -> None:
    with client(gw).messages.stream(model="claude", max_tokens=100, messages=MESSAGES,
                                    extra_headers={"X-Mock-Tokens": "2", "X-Mock-Inter-Token-Delay-Ms": "400"}) as s:
        assert "".join(s.text_stream) == mock_text(2)


# --- bad input: Anthropic-shaped 4xx ----------------------------------------------------------------------

BAD = [
    # id, body, status, error type, the message starts with
    ("no-max-tokens", {"model": "claude", "messages": MESSAGES}, 400, "invalid_request_error", "max_tokens: "),
    ("empty-messages", {"model": "claude", "max_tokens": 5, "messages": []}, 400, "invalid_request_error",
     "messages: "),
    ("assistant-first", {"model": "claude", "max_tokens": 5, "messages": [{"role": "assistant", "content": "x"}]},
     400, "invalid_request_error", "messages.0.role: "),
    ("two-user-turns", {"model": "claude", "max_tokens": 5, "messages": MESSAGES * 2}, 400,
     "invalid_request_error", "messages.1.role: "),
    ("unknown-field", {"model": "claude", "max_tokens": 5, "messages": MESSAGES, "frequency_penalty": 1}, 400,
     "invalid_request_error", "frequency_penalty: "),
    ("not-json", b"{nope", 400, "invalid_request_error", "The request body is not valid JSON"),
    ("empty-body", b"", 400, "invalid_request_error", "The request body is empty"),
    ("unknown-model", {"model": "gpt-9", "max_tokens": 5, "messages": MESSAGES}, 404, "not_found_error",
     "The model 'gpt-9' does not exist"),
    ("too-large", b'{"pad": "' + b"a" * 1_100_000 + b'"}', 413, "request_too_large", "The request body is larger"),
]


@pytest.mark.parametrize(("data", "status", "error_type", "starts"), [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
async def test_bad_input_is_an_anthropic_shaped_4xx_and_one_log_line(
        gw: Gateway, data: Any, status: int, error_type: str, starts: str, request_id: str) -> None:
    got, _, raw = await call(gw, data, {"X-Request-Id": request_id})
    error = error_of(raw)
    assert (got, error["type"]) == (status, error_type)
    assert error["message"].startswith(starts)
    line = gw.log_for(request_id)
    assert (line["endpoint"], line["status"], line["outcome"]) == ("messages", status, "client_error")


def test_the_sdk_raises_bad_request_for_an_unknown_field(gw: Gateway) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        client(gw).messages.create(model="claude", max_tokens=5, messages=MESSAGES, extra_body={"best_of": 2})
    assert raised.value.type == "invalid_request_error" and "best_of" in str(raised.value.message)


def test_the_sdk_raises_not_found_for_an_unknown_model(gw: Gateway) -> None:
    with pytest.raises(anthropic.NotFoundError) as raised:
        client(gw).messages.create(model="gpt-9", max_tokens=5, messages=MESSAGES)
    assert raised.value.type == "not_found_error"


async def test_a_wrong_method_is_a_405_in_the_anthropic_shape(gw: Gateway) -> None:
    status, _, raw = await call(gw, b"", method="GET")
    assert (status, error_of(raw)["type"]) == (405, "invalid_request_error")


async def test_the_openai_endpoints_keep_the_openai_shape(gw: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.url}/v1/chat/completions", json={"model": "claude"}) as response:
            assert response.status == 400 and set((await response.json())["error"]) == {
                "message", "type", "code", "param"}
