"""POST /v1/messages end to end: the official anthropic SDK -> gateway process -> mock provider process.

Against an Anthropic provider the events are the provider's own bytes; against an OpenAI-compatible
one they are translated. Either way the SDK must not be able to tell.
"""

from __future__ import annotations

import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest

from gateway.mock import mock_text

from .conftest import Gateway, Process, start_gateway

TOKENS = 12  # the session mock's default
PROVIDER_KEY = "sk-ant-provider-distinctive-K3v8"
CLIENT_KEY = "sk-ant-client-distinctive-W2q5"
MESSAGES = [{"role": "user", "content": "say something"}]
SYSTEM = "be brief"
PROMPT = 4  # the mock's prompt_tokens: the words of SYSTEM and MESSAGES
SHORT = "timeouts = { connect_s = 1, first_token_s = 0.5, idle_s = 0.6, total_s = 8 }"
RETRY = "retry = { attempts = 2, backoff_base_ms = 10, backoff_cap_ms = 100 }"


def messages_config(mock: str, heartbeat_s: float) -> str:
    """Claude (Anthropic dialect) and DeepSeek (OpenAI dialect) as mock profiles, alone and as a fallback chain."""
    return textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        port = 0
        heartbeat_s = {heartbeat_s}

        [providers.an]
        dialect = "anthropic"
        base_url = "{mock}/an"
        api_key_env = "MESSAGES_TEST_KEY"
        forward_headers = ["x-mock-"]
        {SHORT}
        {RETRY}

        [providers.oa]
        dialect = "openai"
        base_url = "{mock}/oa/v1"
        api_key_env = "MESSAGES_TEST_KEY"
        forward_headers = ["x-mock-"]
        {SHORT}
        {RETRY}

        [providers.leaky]
        dialect = "anthropic"
        base_url = "{mock}/leaky"
        api_key_env = "MESSAGES_TEST_KEY"
        forward_headers = ["x-"]

        [routes.claude]
        arms = [{{ name = "only", provider = "an", model = "claude-mock", weight = 100 }}]

        [routes.deepseek]
        arms = [{{ name = "only", provider = "oa", model = "deepseek-mock", weight = 100 }}]

        [routes.claude-then-deepseek]
        arms = [{{ name = "only", provider = "an", model = "claude-mock", weight = 100 }}]
        fallback = [{{ provider = "oa", model = "deepseek-mock" }}]

        [routes.leaky]
        arms = [{{ name = "only", provider = "leaky", model = "claude-mock", weight = 100 }}]

        [pricing.claude-mock]
        input_per_mtok = 3.0
        output_per_mtok = 15.0

        [pricing.deepseek-mock]
        input_per_mtok = 0.28
        output_per_mtok = 0.42
        """)


def start_messages_gateway(mock: Process, tmp: Path, heartbeat_s: float = 15) -> Gateway:
    return start_gateway(tmp, messages_config(mock.url, heartbeat_s), env={"MESSAGES_TEST_KEY": PROVIDER_KEY})


@pytest.fixture(scope="module")
def gw(mock_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_messages_gateway(mock_upstream, tmp_path_factory.mktemp("messages"))
    yield gateway
    gateway.stop()


def client(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=CLIENT_KEY, max_retries=0)


def tagged(request_id: str, **headers: str) -> dict[str, str]:
    return {"X-Request-Id": request_id, "X-Mock-Tag": request_id, **headers}


async def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=headers or {}) as response:
            return response.status, await response.read()


# --- an Anthropic provider: the provider's own bytes ------------------------------------------------

def test_sdk_create_against_an_anthropic_provider(gw: Gateway, request_id: str) -> None:
    message = client(gw).messages.create(model="claude", max_tokens=100, system=SYSTEM, messages=MESSAGES,
                                         extra_headers=tagged(request_id))
    assert message.content[0].type == "text" and message.content[0].text == mock_text(TOKENS)
    usage = message.usage
    assert (message.stop_reason, usage.input_tokens, usage.output_tokens) == ("end_turn", PROMPT, TOKENS)
    line = gw.log_for(request_id)
    assert (line["endpoint"], line["stream"], line["outcome"], line["provider"]) == ("messages", False, "ok", "an")
    assert (line["prompt_tokens"], line["completion_tokens"], line["usage_source"]) == (PROMPT, TOKENS, "upstream")


def test_sdk_stream_against_an_anthropic_provider(gw: Gateway, request_id: str) -> None:
    with client(gw).messages.stream(model="claude", max_tokens=5, system=SYSTEM, messages=MESSAGES,
                                    extra_headers=tagged(request_id)) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == mock_text(5)
    assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == ("max_tokens", PROMPT, 5)
    line = gw.log_for(request_id)
    assert (line["endpoint"], line["stream"], line["outcome"], line["completion_tokens"]) == ("messages", True, "ok", 5)
    assert line["cost_usd"] == pytest.approx((PROMPT * 3.0 + 5 * 15.0) / 1e6)


async def straight_from_the_mock(mock: Process, gateway_tag: str) -> bytes:
    """The mock's answer to the body the gateway sent it, asked directly, with the message id the mock gave
    the gateway's request (the one part of its answer that differs per request)."""
    [upstream] = mock.mock_records(gateway_tag)
    tag = uuid.uuid4().hex
    status, direct = await post(f"{mock.url}/an/v1/messages", upstream["body"],
                                {"anthropic-version": "2023-06-01", "X-Mock-Tag": tag})
    assert status == 200
    [straight] = mock.mock_records(tag)
    return direct.replace(f"msg_mock{straight['id']}".encode(), f"msg_mock{upstream['id']}".encode())


BODY = {"model": "claude", "max_tokens": 100, "system": [{"type": "text", "text": SYSTEM}], "top_k": 7,
        "stop_sequences": ["\n\nHuman:"], "metadata": {"user_id": "u-1"}, "messages": MESSAGES}


async def test_an_anthropic_providers_stream_reaches_the_client_byte_for_byte(
        gw: Gateway, mock_upstream: Process, request_id: str) -> None:
    status, through = await post(f"{gw.url}/v1/messages", {**BODY, "stream": True}, tagged(request_id))
    assert status == 200
    assert through == await straight_from_the_mock(mock_upstream, request_id)


async def test_an_anthropic_providers_message_reaches_the_client_as_it_is(
        gw: Gateway, mock_upstream: Process, request_id: str) -> None:
    status, through = await post(f"{gw.url}/v1/messages", BODY, tagged(request_id))
    assert status == 200
    assert through == await straight_from_the_mock(mock_upstream, request_id)


async def test_an_anthropic_provider_gets_the_clients_body_with_the_arms_model(
        gw: Gateway, mock_upstream: Process, request_id: str) -> None:
    await post(f"{gw.url}/v1/messages", {**BODY, "stream": True}, tagged(request_id))
    [upstream] = mock_upstream.mock_records(request_id)
    assert upstream["body"] == {**BODY, "stream": True, "model": "claude-mock"}


async def test_the_clients_key_never_reaches_the_provider(gw: Gateway, mock_upstream: Process,
                                                          request_id: str) -> None:
    # The `leaky` provider forwards every x- header: even so, providers get the gateway's key only.
    for route in ("claude", "leaky"):
        tag = uuid.uuid4().hex
        status, _ = await post(f"{gw.url}/v1/messages", {**BODY, "model": route},
                               {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01", "X-Mock-Tag": tag,
                                "X-Mock-Require-Key": PROVIDER_KEY})
        assert status == 200
        [upstream] = mock_upstream.mock_records(tag)
        assert upstream["api_key"] == "matched"  # the mock keeps a verdict on the key, never the key
        assert CLIENT_KEY not in orjson.dumps(upstream).decode()


async def test_the_client_key_is_the_sticky_user_key_when_no_user_id_is_given(gw: Gateway,
                                                                             request_id: str) -> None:
    body = {k: v for k, v in BODY.items() if k != "metadata"}
    await post(f"{gw.url}/v1/messages", body, {"x-api-key": CLIENT_KEY, "X-Request-Id": request_id})
    assert gw.log_for(request_id)["user_key_source"] == "api_key"


async def test_metadata_user_id_is_the_sticky_user_key(gw: Gateway, request_id: str) -> None:
    await post(f"{gw.url}/v1/messages", BODY, {"x-api-key": CLIENT_KEY, "X-Request-Id": request_id})
    assert gw.log_for(request_id)["user_key_source"] == "user"


async def test_a_request_without_anthropic_version_is_served(gw: Gateway) -> None:
    # The SDKs always send it; curl users may not. The gateway speaks one version either way.
    status, body = await post(f"{gw.url}/v1/messages", BODY)
    assert status == 200 and orjson.loads(body)["type"] == "message"


# --- an OpenAI-compatible provider: translated both ways ----------------------------------------------

def test_sdk_create_against_an_openai_provider(gw: Gateway, request_id: str) -> None:
    message = client(gw).messages.create(model="deepseek", max_tokens=100, system=SYSTEM, messages=MESSAGES,
                                         extra_headers=tagged(request_id))
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].type == "text" and message.content[0].text == mock_text(TOKENS)
    usage = message.usage
    assert (message.stop_reason, usage.input_tokens, usage.output_tokens) == ("end_turn", PROMPT, TOKENS)
    assert (message.type, message.role, message.model) == ("message", "assistant", "deepseek-mock")
    line = gw.log_for(request_id)
    assert (line["endpoint"], line["provider"], line["outcome"], line["usage_source"]) == (
        "messages", "oa", "ok", "upstream")


def test_sdk_stream_against_an_openai_provider(gw: Gateway, request_id: str) -> None:
    with client(gw).messages.stream(model="deepseek", max_tokens=5, system=SYSTEM, messages=MESSAGES,
                                    extra_headers=tagged(request_id)) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == mock_text(5)
    assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == ("max_tokens", PROMPT, 5)
    line = gw.log_for(request_id)
    assert (line["endpoint"], line["provider"], line["outcome"], line["completion_tokens"]) == (
        "messages", "oa", "ok", 5)
    assert line["cost_usd"] == pytest.approx((PROMPT * 0.28 + 5 * 0.42) / 1e6)


def test_sdk_stream_events_from_an_openai_provider_are_anthropics_sequence(gw: Gateway) -> None:
    with client(gw).messages.stream(model="deepseek", max_tokens=3, messages=MESSAGES) as stream:
        kinds = [event.type for event in stream]
    # The SDK adds its own `text` events (one per delta) to the wire events.
    assert [k for k in kinds if k != "text"] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]


async def test_an_openai_provider_gets_the_request_in_chat_completions_form(
        gw: Gateway, mock_upstream: Process, request_id: str) -> None:
    await post(f"{gw.url}/v1/messages", {**BODY, "model": "deepseek", "stream": True},
               {**tagged(request_id), "X-Mock-Require-Key": PROVIDER_KEY})
    [upstream] = mock_upstream.mock_records(request_id)
    assert upstream["path"] == "/oa/v1/chat/completions"
    assert upstream["body"] == {
        "messages": [{"role": "system", "content": SYSTEM}, *MESSAGES], "max_tokens": 100, "top_k": 7,
        "stop": ["\n\nHuman:"], "user": "u-1", "model": "deepseek-mock", "stream": True,
        "stream_options": {"include_usage": True}}
    assert upstream["api_key"] == "matched"  # the gateway's own key; the mock keeps only a verdict


async def test_tools_tool_results_and_images_reach_an_openai_provider_translated(
        gw: Gateway, mock_upstream: Process, request_id: str) -> None:
    png = "iVBORw0KGgo="
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
    turns = [
        {"role": "user", "content": [{"type": "text", "text": "weather here?"}, image]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ]
    tools = [{"name": "weather", "description": "Forecast", "input_schema": {"type": "object"}}]
    message = client(gw).messages.create(model="deepseek", max_tokens=100, messages=turns, tools=tools,
                                         tool_choice={"type": "auto"}, extra_headers=tagged(request_id))
    assert message.content[0].type == "text" and message.content[0].text == mock_text(TOKENS)
    [upstream] = mock_upstream.mock_records(request_id)
    assert upstream["body"]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather here?"},
                                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
    ]
    assert upstream["body"]["tools"] == [{"type": "function", "function": {
        "name": "weather", "parameters": {"type": "object"}, "description": "Forecast"}}]
    assert upstream["body"]["tool_choice"] == "auto"


async def test_a_field_chat_completions_cannot_carry_is_refused_only_where_it_must_be(gw: Gateway) -> None:
    body = {**BODY, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    status, answer = await post(f"{gw.url}/v1/messages", {**body, "model": "deepseek"})
    assert status == 400
    error = orjson.loads(answer)["error"]
    assert error["type"] == "invalid_request_error" and error["message"].startswith("thinking: ")
    status, _ = await post(f"{gw.url}/v1/messages", body)  # an Anthropic provider takes it as sent
    assert status == 200


@pytest.mark.parametrize("route", ["claude", "deepseek"])
@pytest.mark.parametrize("knob", [{"X-Mock-Line-Ending": "crlf"}, {"X-Mock-Line-Ending": "cr"},
                                  {"X-Mock-Chunk-Bytes": "1"}, {"X-Mock-Chunk-Bytes": "3"}])
def test_awkward_upstream_framing_reaches_the_sdk_intact(gw: Gateway, route: str, knob: dict[str, str]) -> None:
    # 1- and 3-byte writes split every multi-byte UTF-8 character of the mock's text.
    with client(gw).messages.stream(model=route, max_tokens=100, messages=MESSAGES, extra_headers=knob) as stream:
        assert "".join(stream.text_stream) == mock_text(TOKENS)
        assert stream.get_final_message().usage.output_tokens == TOKENS


# --- the pace and the fallback ----------------------------------------------------------------------------

@pytest.mark.parametrize("route", ["claude", "deepseek"])
async def test_tokens_arrive_one_event_at_a_time(gw: Gateway, route: str) -> None:
    reads: list[float] = []
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.url}/v1/messages", json={**BODY, "model": route, "stream": True},
                                headers={"X-Mock-Inter-Token-Delay-Ms": "50", "X-Mock-Tokens": "10"}) as response:
            async for chunk in response.content.iter_any():
                reads += [time.monotonic()] * chunk.count(b'"type":"text_delta"')
    assert len(reads) == 10
    # The first token reached the client long before the last one was produced (9 gaps of 50 ms).
    assert reads[-1] - reads[0] > 9 * 0.05 * 0.5
    assert len(set(reads)) >= 9  # each delta came in its own read, not in lumps


def test_a_fallback_mid_open_from_claude_to_deepseek_is_invisible_to_the_sdk(
        gw: Gateway, mock_upstream: Process, request_id: str) -> None:
    # Claude answers 200 and then closes before its first token, twice (its two attempts).
    headers = tagged(request_id, **{"X-Mock-Fault": "drop_after=0", "X-Mock-Scope": "an"})
    with client(gw).messages.stream(model="claude-then-deepseek", max_tokens=100, system=SYSTEM,
                                    messages=MESSAGES, extra_headers=headers) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == mock_text(TOKENS)
    assert (final.stop_reason, final.usage.input_tokens, final.usage.output_tokens) == ("end_turn", PROMPT, TOKENS)
    assert [(r["path"], r["outcome"]) for r in mock_upstream.mock_records(request_id)] == [
        ("/an/v1/messages", "dropped"), ("/an/v1/messages", "dropped"), ("/oa/v1/chat/completions", "completed")]
    line = gw.log_for(request_id)
    assert (line["outcome"], line["provider"], line["fallback_used"], line["attempts"]) == ("ok", "oa", True, 3)
    assert line["attempt_errors"] == ["an:upstream_error", "an:upstream_error"]


def test_a_non_streamed_fallback_is_invisible_too(gw: Gateway, request_id: str) -> None:
    headers = tagged(request_id, **{"X-Mock-Fault": "status=529", "X-Mock-Scope": "an"})
    message = client(gw).messages.create(model="claude-then-deepseek", max_tokens=100, messages=MESSAGES,
                                         extra_headers=headers)
    assert message.content[0].type == "text" and message.content[0].text == mock_text(TOKENS)
    assert gw.log_for(request_id)["provider"] == "oa"


# --- GET /v1/models, for both SDKs ----------------------------------------------------------------------

def test_the_anthropic_sdk_lists_the_routes_as_models(gw: Gateway) -> None:
    models = list(client(gw).models.list())
    assert [m.id for m in models] == ["claude", "deepseek", "claude-then-deepseek", "leaky"]
    assert all(m.type == "model" and m.display_name == m.id and m.created_at.year == 1970 for m in models)


def test_the_openai_sdk_still_lists_them_too(gw: Gateway) -> None:
    models = list(openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0).models.list())
    assert [(m.id, m.object, m.owned_by) for m in models][0] == ("claude", "model", "gateway")
