"""POST /v1/messages end to end: the official anthropic SDK -> gateway process -> mock provider process.

Against an Anthropic provider the events are the provider's own bytes; against an OpenAI-compatible
one they are translated. Either way the SDK must not be able to tell.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
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


@pytest.fixture(scope="module")
def gw(mock_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    mock = mock_upstream.url
    text = textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        port = 0

        [providers.an]
        dialect = "anthropic"
        base_url = "{mock}/an"
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

        [routes.leaky]
        arms = [{{ name = "only", provider = "leaky", model = "claude-mock", weight = 100 }}]

        [pricing.claude-mock]
        input_per_mtok = 3.0
        output_per_mtok = 15.0
        """)
    gateway = start_gateway(tmp_path_factory.mktemp("messages"), text, env={"MESSAGES_TEST_KEY": PROVIDER_KEY})
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
                               {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01", "X-Mock-Tag": tag})
        assert status == 200
        [upstream] = mock_upstream.mock_records(tag)
        assert upstream["headers"]["x-api-key"] == PROVIDER_KEY
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
