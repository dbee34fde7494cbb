"""Hostile input and a crowded upstream, through a real gateway: a clear 4xx or a defined error,
never a 500, never a secret, never client-minted state."""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from collections.abc import Iterator

import aiohttp
import orjson
import pytest

from .conftest import Gateway, Process, start_gateway

MESSAGES = [{"role": "user", "content": "hi there"}]


@pytest.fixture(scope="module")
def gw(mock_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    mock = mock_upstream.url
    text = textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        port = 0

        [providers.oa]
        dialect = "openai"
        base_url = "{mock}/oa/v1"
        forward_headers = ["x-mock-", "x-forward-", "cookie", "connection"]
        retry = {{ attempts = 1 }}
        timeouts = {{ first_token_s = 0.5, total_s = 10 }}

        [providers.an]
        dialect = "anthropic"
        base_url = "{mock}/an"
        forward_headers = ["x-mock-"]
        retry = {{ attempts = 1 }}

        [providers.tiny]
        dialect = "openai"
        base_url = "{mock}/tiny/v1"
        forward_headers = ["x-mock-"]
        max_connections = 2
        retry = {{ attempts = 1 }}
        timeouts = {{ pool_s = 0.3 }}

        [providers.cheap]
        dialect = "openai"
        base_url = "{mock}/cheap/v1"
        forward_headers = ["x-mock-"]

        [routes.oa]
        arms = [{{ name = "only", provider = "oa", model = "gpt-mock", weight = 100 }}]
        [routes.an]
        arms = [{{ name = "only", provider = "an", model = "claude-mock", weight = 100 }}]
        [routes.tiny]
        arms = [{{ name = "only", provider = "tiny", model = "m", weight = 100 }}]
        [routes.falls-back]
        arms = [{{ name = "only", provider = "oa", model = "gpt-mock", weight = 100 }}]
        fallback = [{{ provider = "cheap", model = "cheap-mock" }}]
        """)
    gateway = start_gateway(tmp_path_factory.mktemp("hardening"), text)
    yield gateway
    gateway.stop()


async def send(gw: Gateway, body: bytes | dict, headers: dict[str, str] | None = None,
               path: str = "/v1/chat/completions") -> tuple[int, dict, dict]:
    rid = uuid.uuid4().hex
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + path, data=data, headers={
                "Content-Type": "application/json", "X-Request-Id": rid, **(headers or {})}) as response:
            raw = await response.read()
            parsed = orjson.loads(raw) if response.content_type == "application/json" else {"raw": raw}
            return response.status, parsed, gw.log_for(rid)


def chat(**fields: object) -> dict:
    return {"model": "oa", "messages": MESSAGES, **fields}


# --- a clear 400 naming the parameter -------------------------------------------------------------

INVALID = [
    ("tools-a-string", chat(tools="x"), "tools"),
    ("tools-a-number", chat(tools=5), "tools"),
    ("tools-an-object", chat(tools={}), "tools"),
    ("tool-without-a-name", chat(tools=[{"type": "function", "function": {}}]), "tools[0]"),
    ("n-true", chat(n=True), "n"),
    ("n-float", chat(n=1.0), "n"),
    ("n-two", chat(n=2), "n"),
    ("max-tokens-2^64-1", chat(max_tokens=2**64 - 1), "max_tokens"),
    ("max-tokens-zero", chat(max_tokens=0), "max_tokens"),
    ("seed-2^64", orjson.dumps(chat(seed=0)).replace(b'"seed":0', b'"seed":18446744073709551616'), "seed"),
    ("seed-a-string", chat(seed="1"), "seed"),
    ("stream-options-not-an-object", chat(stream=True, stream_options="yes"), "stream_options"),
    ("stop-five-strings", chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    ("user-a-number", chat(user=5), "user"),
    ("user-too-long", chat(user="u" * 513), "user"),
    ("text-part-a-number", chat(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
     "messages[0].content[0].text"),
    ("text-part-an-object", chat(messages=[{"role": "user", "content": [{"type": "text", "text": {}}]}]),
     "messages[0].content[0].text"),
    ("presence-penalty-out-of-range", chat(presence_penalty=3), "presence_penalty"),
    ("tool-choice-a-number", chat(tool_choice=1), "tool_choice"),
]


@pytest.mark.parametrize(("body", "param"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
async def test_an_invalid_field_is_a_400_naming_it(gw: Gateway, body: dict | bytes, param: str) -> None:
    status, response, line = await send(gw, body)
    assert status == 400, response
    assert (response["error"]["code"], response["error"]["param"]) == ("invalid_request", param)
    assert (line["outcome"], line["error_code"]) == ("client_error", "invalid_request")


async def test_n_null_is_accepted_as_the_default(gw: Gateway) -> None:
    status, _, _ = await send(gw, chat(n=None))
    assert status == 200


async def test_a_text_part_on_the_anthropic_arm_is_translated_not_a_500(gw: Gateway) -> None:
    body = {"model": "an", "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]}
    status, response, _ = await send(gw, body)
    assert status == 200 and response["object"] == "chat.completion"


@pytest.mark.parametrize("depth", [65, 255, 1024])
async def test_json_nested_too_deep_is_a_400_not_a_500(gw: Gateway, depth: int) -> None:
    nested = b"[" * (depth - 1) + b"1" + b"]" * (depth - 1)
    body = b'{"model": "oa", "messages": [{"role": "user", "content": "hi"}], "metadata": {"x": ' + nested + b"}}"
    status, response, line = await send(gw, body)
    assert status == 400 and line["outcome"] == "client_error"
    # Deeper than orjson reads at all (1024) is not JSON to it; anything it reads is checked by depth.
    assert "nests deeper" in response["error"]["message"] or "depth limit" in response["error"]["message"]


async def test_nesting_within_the_limit_is_served(gw: Gateway) -> None:
    body = chat(metadata={"a": {"b": {"c": [[["fine"]]]}}})
    assert (await send(gw, body))[0] == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", ""])
async def test_a_body_not_declared_json_is_415(gw: Gateway, content_type: str) -> None:
    status, response, line = await send(gw, chat(), {"Content-Type": content_type})
    assert status == 415 and response["error"]["code"] == "unsupported_media_type"


async def test_a_deflate_body_that_is_not_deflate_is_a_400_not_a_500(gw: Gateway) -> None:
    # aiohttp's parser rejects it before any handler runs: a protocol error, answered as one.
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/v1/chat/completions", data=b"certainly not deflate",
                                headers={"Content-Type": "application/json", "Content-Encoding": "deflate"}) as r:
            assert r.status == 400


@pytest.mark.parametrize("header", ["X-User-Id", "Authorization"])
async def test_non_utf8_bytes_in_identity_headers_are_served_not_a_500(gw: Gateway, header: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    body = orjson.dumps(chat())
    value = b"Bearer \xff\xfe\xc3(" if header == "Authorization" else b"user-\xff\xfe\xc3("
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + header.encode() + b": " + value + b"\r\n"
                 + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    await writer.drain()
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 200"), response[:200]


# --- headers in both directions --------------------------------------------------------------------

async def test_hop_by_hop_and_credential_headers_never_reach_the_provider(
        gw: Gateway, mock_upstream: Process) -> None:
    tag = uuid.uuid4().hex
    await send(gw, chat(), {"X-Mock-Tag": tag, "X-Forward-Me": "yes", "Cookie": "session=secret-cookie",
                            "Authorization": "Bearer sk-client-secret-value", "Connection": "keep-alive"})
    [seen] = mock_upstream.mock_records(tag)
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert headers.get("x-forward-me") == "yes"  # a configured prefix passes
    assert "session=secret-cookie" not in orjson.dumps(seen).decode()
    assert "sk-client-secret-value" not in orjson.dumps(seen).decode()


async def test_no_upstream_response_header_reaches_the_client(gw: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(gw.url + "/v1/chat/completions", json=chat()) as response:
            names = {name.lower() for name in response.headers}
    assert names <= {"content-type", "content-length", "x-request-id", "x-gateway-arm", "date", "server",
                     "connection", "keep-alive"}


# --- a crowded upstream and a stalled one -----------------------------------------------------------

async def test_a_full_pool_is_its_own_503_after_a_bounded_wait_not_a_connect_timeout(gw: Gateway) -> None:
    slow = {"X-Mock-Inter-Token-Delay-Ms": "100"}
    holders = [asyncio.create_task(send(gw, {**chat(stream=True), "model": "tiny"}, slow)) for _ in range(2)]
    await asyncio.sleep(0.3)
    status, response, line = await send(gw, {**chat(), "model": "tiny"})
    await asyncio.gather(*holders)
    assert status == 503 and response["error"]["code"] == "pool_exhausted"
    assert (line["outcome"], line["error_code"]) == ("unavailable", "pool_exhausted")


async def test_a_non_streamed_request_to_a_stalled_provider_falls_back_within_first_token_s(gw: Gateway) -> None:
    status, response, line = await send(gw, {**chat(), "model": "falls-back"},
                                        {"X-Mock-Fault": "stall=headers", "X-Mock-Scope": "oa"})
    assert status == 200 and line["provider"] == "cheap" and line["fallback_used"]
    assert line["attempt_errors"] == ["oa:timeout_first_token"] and line["latency_ms"] < 5000


# --- nothing a client chooses becomes a metric label ------------------------------------------------

async def test_unknown_models_count_under_one_fixed_label(gw: Gateway) -> None:
    for i in range(30):
        assert (await send(gw, {**chat(), "model": f"no-such-model-{i}"}))[0] == 404
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/metrics") as response:
            text = await response.text()
    assert "no-such-model" not in text
    assert 'route="(unknown)"' in text
