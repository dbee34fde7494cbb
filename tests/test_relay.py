"""The relay end to end: official SDKs -> gateway process -> mock provider process."""

from __future__ import annotations

import time

import aiohttp
import anthropic
import openai
import orjson
import pytest

from gateway.mock import mock_text
from gateway.sse import SSEParser

from .conftest import Gateway, Process

TOKENS = 12  # the session mock's default
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say something"}]


def sdk(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-client-key-for-tests", max_retries=0)


@pytest.mark.parametrize("route", ["openai-only", "anthropic-only"])
def test_openai_sdk_streams_the_full_text(gateway: Gateway, route: str, request_id: str) -> None:
    stream = sdk(gateway).chat.completions.create(model=route, messages=MESSAGES, stream=True,
                                                  extra_headers={"X-Request-Id": request_id})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == mock_text(TOKENS)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # not asked for: the usage chunk is not forwarded
    line = gateway.log_for(request_id)
    assert (line["outcome"], line["status"], line["completion_tokens"], line["usage_source"]) == \
        ("ok", 200, TOKENS, "upstream")


@pytest.mark.parametrize("route", ["openai-only", "anthropic-only"])
def test_openai_sdk_gets_usage_when_it_asks_for_it(gateway: Gateway, route: str) -> None:
    stream = sdk(gateway).chat.completions.create(model=route, messages=MESSAGES, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == TOKENS
    assert chunks[-1].usage.prompt_tokens == 4  # "be brief" + "say something"


@pytest.mark.parametrize("route", ["openai-only", "anthropic-only"])
def test_openai_sdk_non_stream_completion(gateway: Gateway, route: str, request_id: str) -> None:
    completion = sdk(gateway).chat.completions.create(model=route, messages=MESSAGES,
                                                      extra_headers={"X-Request-Id": request_id})
    assert completion.choices[0].message.content == mock_text(TOKENS)
    assert completion.usage is not None and completion.usage.completion_tokens == TOKENS
    line = gateway.log_for(request_id)
    assert (line["stream"], line["outcome"], line["prompt_tokens"]) == (False, "ok", 4)


def test_upstream_is_always_asked_for_usage(gateway: Gateway, mock_upstream: Process, request_id: str) -> None:
    tag = request_id
    list(sdk(gateway).chat.completions.create(model="openai-only", messages=MESSAGES, stream=True,
                                              extra_headers={"X-Mock-Tag": tag}))
    record = mock_upstream.mock_records(tag)[-1]
    assert record["body"]["stream_options"] == {"include_usage": True}
    assert record["body"]["model"] == "gpt-mock"


def test_cost_is_computed_from_upstream_usage(gateway: Gateway, request_id: str) -> None:
    list(sdk(gateway).chat.completions.create(model="openai-only", messages=MESSAGES, stream=True,
                                              extra_headers={"X-Request-Id": request_id}))
    line = gateway.log_for(request_id)
    assert line["cost_usd"] == pytest.approx((4 * 2.5 + TOKENS * 10.0) / 1e6)


async def read_events(url: str, body: dict, headers: dict[str, str] | None = None
                      ) -> tuple[aiohttp.ClientResponse, list[tuple[float, list]]]:
    """POST and read the SSE response as it arrives: (arrival time, events) per network read."""
    reads: list[tuple[float, list]] = []
    parser = SSEParser()
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=headers or {}) as response:
            async for chunk in response.content.iter_any():
                reads.append((time.monotonic(), parser.feed(chunk)))
    return response, reads


async def test_tokens_arrive_one_event_at_a_time(gateway: Gateway) -> None:
    _, reads = await read_events(
        f"{gateway.url}/v1/chat/completions",
        {"model": "openai-only", "messages": MESSAGES, "stream": True},
        {"X-Mock-Inter-Token-Delay-Ms": "50", "X-Mock-Tokens": "10"})
    content_reads = [r for r in reads if any('"content":"' in e.data and '"content":""' not in e.data
                                             for e in r[1])]
    # Each token is written the moment it arrives, not collected into lumps.
    assert len(content_reads) >= 9
    # The first token reached the client long before the last one was produced.
    assert content_reads[-1][0] - content_reads[0][0] > 9 * 0.05 * 0.5


async def test_stream_response_headers(gateway: Gateway, request_id: str) -> None:
    response, _ = await read_events(f"{gateway.url}/v1/chat/completions",
                                    {"model": "chat", "messages": MESSAGES, "stream": True},
                                    {"X-Request-Id": request_id})
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["X-Request-Id"] == request_id
    assert response.headers["X-Gateway-Arm"] in ("control", "canary")


@pytest.mark.parametrize("route", ["openai-only", "anthropic-only"])
@pytest.mark.parametrize("knob", [{"X-Mock-Line-Ending": "crlf"}, {"X-Mock-Line-Ending": "cr"},
                                  {"X-Mock-Chunk-Bytes": "1"}, {"X-Mock-Chunk-Bytes": "3"}])
def test_awkward_upstream_framing_relays_intact(gateway: Gateway, route: str, knob: dict[str, str]) -> None:
    # 1- and 3-byte writes split every multi-byte UTF-8 character of the mock's text.
    stream = sdk(gateway).chat.completions.create(model=route, messages=MESSAGES, stream=True,
                                                  extra_headers=knob)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == mock_text(TOKENS)


async def test_stream_chat_sends_tokens_then_done(gateway: Gateway, request_id: str) -> None:
    response, reads = await read_events(f"{gateway.url}/v1/stream/chat",
                                        {"prompt": "hello there", "model": "openai-only"},
                                        {"X-Request-Id": request_id})
    events = [e for _, batch in reads for e in batch]
    assert response.headers["Content-Type"] == "text/event-stream"
    tokens = [orjson.loads(e.data)["token"] for e in events if e.event == "message"]
    assert "".join(tokens) == mock_text(TOKENS)
    done = orjson.loads(events[-1].data)
    assert events[-1].event == "done"
    assert done["usage"] == {"prompt_tokens": 2, "completion_tokens": TOKENS}
    assert done["ttft_ms"] > 0 and done["latency_ms"] >= done["ttft_ms"]
    assert gateway.log_for(request_id)["endpoint"] == "stream_chat"


async def test_stream_chat_accepts_messages(gateway: Gateway) -> None:
    _, reads = await read_events(f"{gateway.url}/v1/stream/chat",
                                 {"messages": [{"role": "user", "content": "hi"}], "model": "anthropic-only"})
    tokens = [orjson.loads(e.data)["token"] for _, batch in reads for e in batch if e.event == "message"]
    assert "".join(tokens) == mock_text(TOKENS)


def test_models_lists_public_routes(gateway: Gateway) -> None:
    ids = [m.id for m in sdk(gateway).models.list()]
    assert ids == ["openai-only", "anthropic-only", "chat", "dead-first"]


async def test_healthz(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway.url}/healthz") as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})
        async with session.get(f"{gateway.url}/readyz") as response:
            assert response.status == 200


def test_the_mock_speaks_anthropic_to_the_official_sdk(mock_upstream: Process) -> None:
    # The translation is only as good as the mock is faithful: check it with Anthropic's own client.
    client = anthropic.Anthropic(base_url=f"{mock_upstream.url}/an", api_key="test", max_retries=0)
    with client.messages.stream(model="claude-mock", max_tokens=100,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == mock_text(TOKENS)
    assert final.usage.output_tokens == TOKENS
