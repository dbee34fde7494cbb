"""The mock provider: dialect shapes, latency profiles, knobs and faults."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from gateway.mock import WORDS, MockProfile, build_mock_app, mock_text, start_mock
from gateway.mock.records import RecordLimits
from gateway.mock.state import STATE

from .conftest import Gateway, Process, config_text, start_gateway

pytestmark = pytest.mark.asyncio

FAST = MockProfile(tokens=5, first_token_delay_ms=0, inter_token_delay_ms=0)
SLOW = MockProfile(tokens=2, first_token_delay_ms=300, inter_token_delay_ms=0)
ANTHROPIC = {"anthropic-version": "2023-06-01"}
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"

Client = TestClient[Any, Any]


def fault(spec: str) -> dict[str, str]:
    return {"X-Mock-Fault": spec}


def openai_body(stream: bool = True, **extra: Any) -> dict[str, Any]:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi there you"}], "stream": stream}
    return body | extra


def anthropic_body(stream: bool = True, **extra: Any) -> dict[str, Any]:
    body = {
        "model": "claude-test",
        "max_tokens": 100,
        "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}],
        "stream": stream,
    }
    return body | extra


def sse(body: bytes, eol: bytes = b"\n") -> list[tuple[str | None, Any]]:
    """(event name, data) per event; data parsed as JSON unless it is [DONE]."""
    out: list[tuple[str | None, Any]] = []
    for block in body.split(eol + eol):
        if not block:
            continue
        name, data = None, None
        for line in block.split(eol):
            field, _, value = line.partition(b": ")
            if field == b"event":
                name = value.decode()
            elif field == b"data":
                data = value.decode() if value == b"[DONE]" else orjson.loads(value)
        out.append((name, data))
    return out


def text_of(events: list[tuple[str | None, Any]]) -> str:
    parts = []
    for _, data in events:
        if isinstance(data, dict) and data.get("choices"):
            parts.append(data["choices"][0]["delta"].get("content", ""))
        elif isinstance(data, dict) and data.get("type") == "content_block_delta":
            parts.append(data["delta"]["text"])
    return "".join(parts)


async def records(client: Client) -> list[dict[str, Any]]:
    resp = await client.get("/_mock/requests")
    return await resp.json()


async def wait_for(
    client: Client, ok: Callable[[dict[str, Any]], bool], timeout: float = 3.0
) -> dict[str, Any]:
    """Poll the records until the latest one satisfies ok."""
    deadline = time.monotonic() + timeout
    while True:
        seen = await records(client)
        if seen and ok(seen[-1]):
            return seen[-1]
        if time.monotonic() > deadline:
            raise AssertionError(f"record never matched: {seen[-1:]}")
        await asyncio.sleep(0.005)


@pytest_asyncio.fixture
async def client(aiohttp_client: Callable[..., Awaitable[Client]]) -> Client:
    return await aiohttp_client(build_mock_app(profiles={"slow": SLOW}, default=FAST, record_requests=True))


async def test_mock_text_joins_words_and_wraps() -> None:
    # async only so the module-wide asyncio mark fits every test
    assert mock_text(3) == "Hello wörld 你好"
    assert mock_text(len(WORDS) + 1) == "".join(WORDS) + WORDS[0]
    assert any(len(w.encode()) > len(w) for w in WORDS)  # multi-byte UTF-8 present


async def test_openai_stream_has_role_tokens_finish_usage_chunk_and_done(client: Client) -> None:
    resp = await client.post(CHAT, json=openai_body(stream_options={"include_usage": True}))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = [data for _, data in sse(await resp.read())]

    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [e["choices"][0]["delta"]["content"] for e in events[1:6]] == list(WORDS[:5])
    assert events[6]["choices"][0]["delta"] == {} and events[6]["choices"][0]["finish_reason"] == "stop"
    assert events[7]["choices"] == []
    assert events[7]["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert events[8] == "[DONE]" and len(events) == 9
    for chunk in events[:7]:
        assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == "gpt-test"
        assert "usage" in chunk and chunk["usage"] is None


async def test_openai_stream_without_include_usage_has_no_usage(client: Client) -> None:
    resp = await client.post(CHAT, json=openai_body())
    events = [data for _, data in sse(await resp.read())]
    assert events[-1] == "[DONE]"
    assert all("usage" not in e for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


async def test_openai_non_stream_returns_chat_completion(client: Client) -> None:
    resp = await client.post(CHAT, json=openai_body(stream=False))
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "chat.completion" and body["model"] == "gpt-test" and body["id"]
    assert body["choices"][0]["message"] == {"role": "assistant", "content": mock_text(5)}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


async def test_max_tokens_below_tokens_stops_with_length(client: Client) -> None:
    resp = await client.post(CHAT, json=openai_body(stream=False, max_tokens=2))
    body = await resp.json()
    assert body["choices"][0]["message"]["content"] == mock_text(2)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


async def test_anthropic_stream_event_order_and_usage(client: Client) -> None:
    resp = await client.post(MESSAGES, json=anthropic_body(), headers=ANTHROPIC)
    assert resp.status == 200
    events = sse(await resp.read())
    names = [name for name, _ in events]
    assert names == (
        ["message_start", "content_block_start", "ping"]
        + ["content_block_delta"] * 5
        + ["content_block_stop", "message_delta", "message_stop"]
    )
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["model"] == "claude-test" and start["role"] == "assistant"
    assert start["usage"] == {"input_tokens": 4, "output_tokens": 1}  # "be brief" + "hi there"
    assert events[3][1]["delta"] == {"type": "text_delta", "text": "Hello"}
    assert text_of(events) == mock_text(5)
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"] == {"output_tokens": 5}


async def test_anthropic_non_stream_returns_message_with_max_tokens_stop(client: Client) -> None:
    resp = await client.post(MESSAGES, json=anthropic_body(stream=False, max_tokens=3), headers=ANTHROPIC)
    body = await resp.json()
    assert body["type"] == "message" and body["role"] == "assistant" and body["model"] == "claude-test"
    assert body["content"] == [{"type": "text", "text": mock_text(3)}]
    assert body["stop_reason"] == "max_tokens"
    assert body["usage"] == {"input_tokens": 4, "output_tokens": 3}


async def test_anthropic_version_header_is_required(client: Client) -> None:
    resp = await client.post(MESSAGES, json=anthropic_body())
    assert resp.status == 400
    body = await resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in body["error"]["message"]


async def test_malformed_json_is_400_in_each_dialect(client: Client) -> None:
    resp = await client.post(CHAT, data=b"{not json")
    assert resp.status == 400
    assert (await resp.json())["error"]["type"] == "invalid_request_error"
    resp = await client.post(MESSAGES, data=b"{not json", headers=ANTHROPIC)
    assert resp.status == 400
    assert (await resp.json())["type"] == "error"


async def test_invalid_fault_spec_is_400(client: Client) -> None:
    resp = await client.post(CHAT, json=openai_body(), headers=fault("explode=1"))
    assert resp.status == 400
    assert "explode" in (await resp.json())["error"]["message"]


async def test_profile_path_prefix_selects_latency(client: Client) -> None:
    started = time.monotonic()
    resp = await client.post("/slow" + CHAT, json=openai_body())
    slow_events = sse(await resp.read())
    slow = time.monotonic() - started

    started = time.monotonic()
    resp = await client.post("/unknown" + CHAT, json=openai_body())  # falls back to the default profile
    fast_events = sse(await resp.read())
    fast = time.monotonic() - started

    assert slow >= 0.29  # SLOW's first-token delay is 300 ms
    assert fast < slow
    assert text_of(slow_events) == mock_text(SLOW.tokens)
    assert text_of(fast_events) == mock_text(FAST.tokens)
    assert [r["profile"] for r in await records(client)] == ["slow", "unknown"]


async def test_knob_headers_override_profile(client: Client) -> None:
    knobs = {"X-Mock-Tokens": "7", "X-Mock-First-Token-Delay-Ms": "0"}
    resp = await client.post("/slow" + CHAT, json=openai_body(), headers=knobs)
    started = time.monotonic()
    assert text_of(sse(await resp.read())) == mock_text(7)
    assert time.monotonic() - started < 0.29


async def test_models_lists_in_openai_shape(client: Client) -> None:
    for path in ("/v1/models", "/slow/v1/models"):
        body = await (await client.get(path)).json()
        assert body["object"] == "list"
        assert body["data"] and all(m["object"] == "model" and m["id"] for m in body["data"])


async def test_status_fault_with_retry_after_in_each_dialect(client: Client) -> None:
    headers = fault("status=503;retry_after=7")
    resp = await client.post(CHAT, json=openai_body(), headers=headers)
    assert resp.status == 503 and resp.headers["Retry-After"] == "7"
    error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "code"}

    resp = await client.post(MESSAGES, json=anthropic_body(), headers=headers | ANTHROPIC)
    assert resp.status == 503 and resp.headers["Retry-After"] == "7"
    body = await resp.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert [r["outcome"] for r in await records(client)] == ["status", "status"]


async def test_times_limits_fault_per_key_until_reset(client: Client) -> None:
    async def status(key: str) -> int:
        headers = fault(f"status=500;times=2;key={key}")
        resp = await client.post(CHAT, json=openai_body(stream=False), headers=headers)
        await resp.read()
        return resp.status

    assert [await status("a") for _ in range(3)] == [500, 500, 200]
    assert await status("b") == 500  # a separate counter per key
    await client.delete("/_mock/requests")
    assert await status("a") == 500


async def test_drop_after_aborts_connection_mid_stream(client: Client) -> None:
    resp = await client.post(CHAT, json=openai_body(), headers=fault("drop_after=2"))
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    record = await wait_for(client, lambda r: r["ended"] is not None)
    assert record["outcome"] == "dropped" and record["tokens_sent"] == 2


async def test_drop_after_delivers_tokens_before_the_abort(client: Client) -> None:
    resp = await client.post(CHAT, json=openai_body(), headers=fault("drop_after=2"))
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async for piece in resp.content.iter_any():
            received += piece
    assert text_of(sse(received)) == mock_text(2)


async def test_truncate_after_ends_cleanly_without_done(client: Client) -> None:
    resp = await client.post(CHAT, json=openai_body(), headers=fault("truncate_after=3"))
    events = sse(await resp.read())  # no payload error: the chunked body ended properly
    assert text_of(events) == mock_text(3)
    assert all(data != "[DONE]" for _, data in events)
    assert all(e["choices"][0]["finish_reason"] is None for _, e in events)
    assert (await records(client))[-1]["outcome"] == "truncated"


async def test_truncate_after_anthropic_has_no_message_stop(client: Client) -> None:
    resp = await client.post(MESSAGES, json=anthropic_body(), headers=fault("truncate_after=1") | ANTHROPIC)
    names = [name for name, _ in sse(await resp.read())]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta"]


async def test_error_after_sends_in_stream_error_event(client: Client) -> None:
    resp = await client.post(CHAT, json=openai_body(), headers=fault("error_after=2"))
    events = [data for _, data in sse(await resp.read())]
    assert text_of([(None, e) for e in events]) == mock_text(2)
    assert set(events[-1]["error"]) == {"message", "type", "code"}
    assert "[DONE]" not in events

    resp = await client.post(MESSAGES, json=anthropic_body(), headers=fault("error_after=2") | ANTHROPIC)
    events = sse(await resp.read())
    overloaded = {"type": "overloaded_error", "message": "Overloaded"}
    assert events[-1] == ("error", {"type": "error", "error": overloaded})
    assert text_of(events) == mock_text(2)
    assert [r["outcome"] for r in await records(client)] == ["error_event", "error_event"]


async def test_scope_restricts_fault_to_listed_profiles(client: Client) -> None:
    headers = {"X-Mock-Fault": "status=503", "X-Mock-Scope": "primary,other", "X-Mock-Tokens": "2"}
    primary = await client.post("/primary" + CHAT, json=openai_body(stream=False), headers=headers)
    fallback = await client.post("/fallback" + CHAT, json=openai_body(stream=False), headers=headers)
    assert primary.status == 503
    assert fallback.status == 200
    # knob headers apply out of scope too
    assert (await fallback.json())["choices"][0]["message"]["content"] == mock_text(2)


async def test_omit_usage_leaves_usage_out_of_streams(client: Client) -> None:
    body = openai_body(stream_options={"include_usage": True})
    resp = await client.post(CHAT, json=body, headers=fault("omit_usage=1"))
    events = [data for _, data in sse(await resp.read())]
    assert events[-1] == "[DONE]" and all("usage" not in e for e in events[:-1])

    resp = await client.post(MESSAGES, json=anthropic_body(), headers=fault("omit_usage=1") | ANTHROPIC)
    events = sse(await resp.read())
    assert "usage" not in events[0][1]["message"]
    assert "usage" not in events[-2][1]


async def test_stall_first_then_client_close_is_recorded_promptly(client: Client) -> None:
    resp = await client.post(CHAT, json=openai_body(), headers=fault("stall=first"))
    assert resp.status == 200  # headers arrived, then nothing
    await wait_for(client, lambda r: r["outcome"] == "stalled")
    resp.close()
    closed = time.time()
    record = await wait_for(client, lambda r: r["ended"] is not None)
    assert record["outcome"] == "client_closed"
    assert record["ended"] - closed < 0.5


async def test_close_while_sleeping_between_tokens_is_recorded_promptly(client: Client) -> None:
    resp = await client.post(CHAT, json=openai_body(), headers={"X-Mock-Inter-Token-Delay-Ms": "10000"})
    await resp.content.readuntil(b"Hello")  # the first token arrived; the mock now sleeps 10 s
    resp.close()
    closed = time.time()
    record = await wait_for(client, lambda r: r["ended"] is not None)
    assert record["outcome"] == "client_closed" and record["tokens_sent"] == 1
    assert record["ended"] - closed < 0.5


async def test_stall_headers_sends_nothing_until_client_gives_up(client: Client) -> None:
    with pytest.raises(asyncio.TimeoutError):
        timeout = aiohttp.ClientTimeout(total=0.2)
        await client.post(CHAT, json=openai_body(), headers=fault("stall=headers"), timeout=timeout)
    gave_up = time.time()
    record = await wait_for(client, lambda r: r["ended"] is not None)
    assert record["outcome"] == "client_closed" and record["status"] is None
    assert record["ended"] - gave_up < 0.5


async def test_stall_after_sends_tokens_then_nothing(client: Client) -> None:
    resp = await client.post(CHAT, json=openai_body(), headers=fault("stall_after=2"))
    record = await wait_for(client, lambda r: r["outcome"] == "stalled")
    assert record["tokens_sent"] == 2 and record["ended"] is None  # still open, sending nothing
    resp.close()


async def test_garbage_after_sends_tokens_then_a_page_with_no_sse_field(client: Client) -> None:
    resp = await client.post(CHAT, json=openai_body(), headers=fault("garbage_after=2"))
    body = await resp.read()
    events, _, page = body.rpartition(b"\n\n")
    assert text_of(sse(events + b"\n\n")) == mock_text(2)
    assert page.startswith(b"<html>") and b"data" not in page and b"\n\n" not in page
    assert (await records(client))[-1]["outcome"] == "garbage"


async def test_garbage_after_zero_with_a_content_type_is_a_proxys_html_page(client: Client) -> None:
    resp = await client.post(CHAT, json=openai_body(), headers=fault("garbage_after=0;content_type=text/html"))
    assert (resp.status, resp.headers["Content-Type"]) == (200, "text/html")
    assert (await resp.read()).startswith(b"<html>")


async def test_bad_json_after_sends_an_event_whose_data_is_not_json(client: Client) -> None:
    resp = await client.post(MESSAGES, json=anthropic_body(), headers=fault("bad_json_after=1") | ANTHROPIC)
    body = await resp.read()
    assert body.endswith(b'\n\ndata: {"choices": [\n\n')
    assert text_of(sse(body.removesuffix(b'data: {"choices": [\n\n'))) == mock_text(1)
    assert (await records(client))[-1]["outcome"] == "bad_json"


async def test_endless_after_sends_one_line_of_endless_bytes_with_no_line_ending(client: Client) -> None:
    resp = await client.post(CHAT, json=openai_body(), headers=fault("endless_after=1;endless_bytes=300000"))
    body = await resp.read()
    events, _, line = body.rpartition(b"\n\n")
    assert text_of(sse(events + b"\n\n")) == mock_text(1)
    assert line == b"data: " + b"x" * 300000
    record = (await records(client))[-1]
    assert (record["outcome"], record["bytes_sent"]) == ("endless", len(body))


async def test_an_endless_line_stops_when_the_reader_leaves(client: Client) -> None:
    resp = await client.post(CHAT, json=openai_body(), headers=fault("endless_after=0"))
    received = 0
    async for piece in resp.content.iter_any():
        received += len(piece)
        if received > 1 << 20:
            break
    resp.close()
    record = await wait_for(client, lambda r: r["ended"] is not None)
    assert record["outcome"] == "client_closed"
    assert record["bytes_sent"] < 64 << 20  # what the socket buffers held, not the gigabyte


async def test_non_streaming_garbage_is_a_200_whose_body_is_not_json(client: Client) -> None:
    resp = await client.post(CHAT, json=openai_body(stream=False), headers=fault("bad_json_after=0"))
    assert resp.status == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(await resp.read())


@pytest.mark.parametrize("spec", ["content_type=", "garbage_after=1;endless_after=2", "endless_bytes=-1"])
async def test_a_bad_new_fault_spec_is_400(client: Client, spec: str) -> None:
    assert (await client.post(CHAT, json=openai_body(), headers=fault(spec))).status == 400


async def test_chunk_bytes_one_yields_the_same_body(client: Client) -> None:
    whole = await (await client.post(MESSAGES, json=anthropic_body(), headers=ANTHROPIC)).read()
    resp = await client.post(MESSAGES, json=anthropic_body(), headers={"X-Mock-Chunk-Bytes": "1"} | ANTHROPIC)
    pieces = [piece async for piece in resp.content.iter_any()]
    assert b"".join(pieces) == whole.replace(b"msg_mock1", b"msg_mock2")  # ids differ per request
    assert len(pieces) > 1  # really written in pieces, not one buffer


async def test_crlf_and_cr_line_endings(client: Client) -> None:
    for name, eol in (("crlf", b"\r\n"), ("cr", b"\r")):
        resp = await client.post(CHAT, json=openai_body(), headers={"X-Mock-Line-Ending": name})
        body = await resp.read()
        assert body.endswith(b"data: [DONE]" + eol + eol)
        if eol == b"\r":
            assert b"\n" not in body
        else:
            assert body.count(b"\n") == body.count(b"\r\n")
        assert text_of(sse(body, eol)) == mock_text(FAST.tokens)


async def test_require_key_header_rejects_wrong_key_in_dialect_shape(client: Client) -> None:
    require = {"X-Mock-Require-Key": "sk-right"}
    resp = await client.post(CHAT, json=openai_body(), headers=require | {"Authorization": "Bearer sk-wrong"})
    assert resp.status == 401 and "error" in await resp.json()
    right = {"Authorization": "Bearer sk-right"}
    resp = await client.post(CHAT, json=openai_body(stream=False), headers=require | right)
    assert resp.status == 200

    resp = await client.post(MESSAGES, json=anthropic_body(), headers=require | ANTHROPIC)
    body = await resp.json()
    assert resp.status == 401 and body["error"]["type"] == "authentication_error"
    right = {"x-api-key": "sk-right"}
    resp = await client.post(MESSAGES, json=anthropic_body(stream=False), headers=require | ANTHROPIC | right)
    assert resp.status == 200


async def test_require_api_key_argument_applies_to_every_request(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    client = await aiohttp_client(build_mock_app(default=FAST, require_api_key="sk-app"))
    assert (await client.post(CHAT, json=openai_body())).status == 401
    key = {"Authorization": "Bearer sk-app"}
    assert (await client.post(CHAT, json=openai_body(stream=False), headers=key)).status == 200


async def test_records_endpoint_reports_requests_and_resets(client: Client) -> None:
    before = time.time()
    headers = {"X-Mock-First-Token-Delay-Ms": "0"}
    await (await client.post("/slow" + CHAT, json=openai_body(), headers=headers)).read()
    await (await client.post(MESSAGES, json=anthropic_body(stream=False), headers=ANTHROPIC)).read()
    await (await client.get("/v1/models")).read()  # not a generation: not recorded

    first, second = await records(client)
    assert second["id"] > first["id"]
    assert first["profile"] == "slow" and first["path"] == "/slow" + CHAT
    assert first["headers"]["x-mock-first-token-delay-ms"] == "0"
    assert second["headers"]["anthropic-version"] == "2023-06-01" and second["profile"] == "default"
    assert first["body"] == openai_body() and first["body_truncated"] is False
    assert before <= first["started"] <= first["ended"] <= time.time()
    assert (first["outcome"], first["tokens_sent"]) == ("completed", SLOW.tokens)
    assert first["bytes_sent"] > 0
    assert (second["outcome"], second["tokens_sent"]) == ("completed", FAST.tokens)

    assert (await client.delete("/_mock/requests")).status == 200
    assert await records(client) == []


async def test_records_name_credential_headers_but_never_hold_their_values(client: Client) -> None:
    secrets = {"Authorization": "Bearer sk-oa-SECRET1", "X-Api-Key": "sk-an-SECRET2", "Cookie": "s=SECRET3",
               "X-Mock-Require-Key": "sk-oa-SECRET1", "X-Goog-Api-Key": "SECRET4"}
    await (await client.post(CHAT, json=openai_body(stream=False), headers=secrets)).read()
    [record] = await records(client)
    assert b"SECRET" not in orjson.dumps(record)
    assert {name: record["headers"][name] for name in ("authorization", "x-api-key", "cookie",
                                                        "x-mock-require-key", "x-goog-api-key")} == dict.fromkeys(
        ("authorization", "x-api-key", "cookie", "x-mock-require-key", "x-goog-api-key"), "[redacted]")


async def test_records_say_whether_the_key_matched_instead_of_the_key(client: Client) -> None:
    cases = [({}, "absent"), ({"Authorization": "Bearer sk-any"}, "present"),
             ({"Authorization": "Bearer sk-right", "X-Mock-Require-Key": "sk-right"}, "matched"),
             ({"Authorization": "Bearer sk-wrong", "X-Mock-Require-Key": "sk-right"}, "mismatched")]
    for headers, _ in cases:
        await (await client.post(CHAT, json=openai_body(stream=False), headers=headers)).read()
    assert [(r["api_key"], r["status"]) for r in await records(client)] == [
        ("absent", 200), ("present", 200), ("matched", 200), ("mismatched", 401)]


async def test_without_recording_the_records_path_is_404_and_nothing_is_kept(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    app = build_mock_app(default=FAST)
    client = await aiohttp_client(app)
    await (await client.post(CHAT, json=openai_body(), headers={"Authorization": "Bearer sk-x"})).read()
    assert (await client.get("/_mock/requests")).status == 404
    assert (await client.delete("/_mock/requests")).status == 404
    assert app[STATE].recorder.records() == []


async def test_records_keep_only_the_newest_past_the_count_bound(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    app = build_mock_app(default=FAST, record_requests=True, record_limits=RecordLimits(records=3))
    client = await aiohttp_client(app)
    for _ in range(5):
        await (await client.post(CHAT, json=openai_body(stream=False))).read()
    assert [r["id"] for r in await records(client)] == [3, 4, 5]


async def test_records_keep_only_the_newest_past_the_byte_bound(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    limits = RecordLimits(bytes=20_000, body_bytes=4096)
    client = await aiohttp_client(build_mock_app(default=FAST, record_requests=True, record_limits=limits))
    for _ in range(20):  # about 4.5 KB a record: only four fit
        body = openai_body(stream=False, messages=[{"role": "user", "content": "x" * 4000}])
        await (await client.post(CHAT, json=body)).read()
    kept = await records(client)
    assert [r["id"] for r in kept] == [17, 18, 19, 20]
    assert len(orjson.dumps(kept)) <= limits.bytes + 4 * 200  # plus what the server added after sizing


async def test_a_body_over_the_limit_is_kept_as_its_first_bytes(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    limits = RecordLimits(body_bytes=100)
    client = await aiohttp_client(build_mock_app(default=FAST, record_requests=True, record_limits=limits))
    raw = orjson.dumps(openai_body(stream=False, messages=[{"role": "user", "content": "y" * 1000}]))
    await (await client.post(CHAT, data=raw)).read()
    [record] = await records(client)
    assert record["body"] == raw[:100].decode()
    assert (record["body_truncated"], record["body_bytes"]) == (True, len(raw))


async def test_start_mock_on_port_zero_serves_and_cleans_up_stalls_fast() -> None:
    runner, port = await start_mock("127.0.0.1", 0, default=FAST)
    assert port > 0
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"http://127.0.0.1:{port}{CHAT}", json=openai_body(stream=False))
        assert (await resp.json())["choices"][0]["message"]["content"] == mock_text(FAST.tokens)

        url = f"http://127.0.0.1:{port}{CHAT}"
        stalled = await session.post(url, json=openai_body(), headers=fault("stall=first"))
        started = time.monotonic()
        await runner.cleanup()  # a stalled handler must not hold shutdown for its timeout
        assert time.monotonic() - started < 5
        stalled.close()


# --- the mock inside `gateway serve` ---------------------------------------------------------


def embedded_mock_url(gateway: Gateway) -> str:
    match = re.search(rb"built-in mock provider on (http://127\.0\.0\.1:\d+)", gateway.stderr_path.read_bytes())
    assert match, "gateway serve did not start its mock"
    return match.group(1).decode()


@pytest.mark.parametrize("record_requests", [False, True])
async def test_the_mock_inside_gateway_serve_records_only_when_configured_and_never_a_key(
    mock_upstream: Process, tmp_path: Path, record_requests: bool
) -> None:
    table = f'\n[mock]\nhost = "127.0.0.1"\nport = 0\nrecord_requests = {str(record_requests).lower()}\n'
    gateway = start_gateway(tmp_path, config_text(mock_upstream.url, table))
    try:
        url = embedded_mock_url(gateway)
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": "Bearer sk-embedded-SECRET"}
            async with session.post(url + CHAT, json=openai_body(stream=False), headers=headers) as response:
                assert response.status == 200
            async with session.get(url + "/_mock/requests") as response:
                assert response.status == (200 if record_requests else 404)
                listing = await response.read()
    finally:
        gateway.stop()
    if record_requests:
        [record] = orjson.loads(listing)
        assert record["api_key"] == "present" and b"SECRET" not in listing


async def test_under_start_mock_a_sleeping_stream_polls_nothing_and_still_sees_its_client_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # start_mock's runner cancels the handler of a client that goes away: a stream sleeping between
    # tokens waits on its time and the shutdown only (thousands of idle streams must not each wake
    # every few ms), and its record still says client_closed.
    from gateway.mock import playback

    checks = 0
    real_client_gone = playback.client_gone

    def counting(request: Any) -> bool:
        nonlocal checks
        checks += 1
        return real_client_gone(request)

    monkeypatch.setattr(playback, "client_gone", counting)
    runner, port = await start_mock("127.0.0.1", 0, default=FAST, record_requests=True)
    try:
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{port}"
            resp = await session.post(base + CHAT, json=openai_body(),
                                      headers={"X-Mock-Tokens": "2", "X-Mock-Inter-Token-Delay-Ms": "60000"})
            assert (await resp.content.readline()).startswith(b"data:")  # the first token; the second is 60 s away
            await asyncio.sleep(0.2)  # forty polls' worth at the polling interval
            assert checks <= 2
            resp.close()
            for _ in range(500):
                [record] = await (await session.get(base + "/_mock/requests")).json()
                if record["ended"] is not None:
                    break
                await asyncio.sleep(0.01)
            assert record["outcome"] == "client_closed" and record["tokens_sent"] == 1
    finally:
        await runner.cleanup()
