"""Resumable streams through real processes: a dropped client resumes with Last-Event-ID and gets
exactly the rest, on the same gateway or another one sharing Redis; the upstream outlives the client
for the window and no longer; DELETE stops it at once; a resume needs the stream's token and key."""

from __future__ import annotations

import asyncio
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.keys import hash_key
from gateway.sse import Event, SSEParser

from .conftest import Gateway, Process, Redis, start_gateway, start_redis
from .test_disconnect import rss_kib, wait_for

WINDOW_S = 1.5
BOUND = 64 * 1024
KEY, OTHER_KEY = "gk-resume-test-key-one", "gk-resume-test-key-two"


def gateway_config(paced: Process, fast: Process, extra: str = "") -> str:
    return textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        port = 0
        heartbeat_s = 0.5
        default_route = "paced"

        [resume]
        window_s = {WINDOW_S}
        max_bytes_per_stream = {BOUND}

        [providers.paced]
        dialect = "openai"
        base_url = "{paced.url}/v1"
        forward_headers = ["x-mock-"]

        [providers.fast]
        dialect = "openai"
        base_url = "{fast.url}/oa/v1"
        forward_headers = ["x-mock-"]

        [routes.paced]
        arms = [{{ name = "paced-arm", provider = "paced", model = "mock-paced", weight = 100 }}]

        [routes.fast]
        arms = [{{ name = "fast-arm", provider = "fast", model = "mock-fast", weight = 100 }}]
        """) + textwrap.dedent(extra)


KEYS = f"""
    [auth]
    keys = [{{ name = "one", hash = "{hash_key(KEY)}" }}, {{ name = "two", hash = "{hash_key(OTHER_KEY)}" }}]
    """


@pytest.fixture(scope="module")
def gw(paced_mock: Process, mock_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One worker, events in its own memory; gateway keys on."""
    gateway = start_gateway(tmp_path_factory.mktemp("resume"), gateway_config(paced_mock, mock_upstream, KEYS))
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def redis_pair(paced_mock: Process, mock_upstream: Process,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Gateway, Redis]]:
    """Two gateway instances sharing one real redis-server."""
    redis = start_redis()
    text = gateway_config(paced_mock, mock_upstream, f'[store]\nredis_url = "{redis.url}"\n')
    first = start_gateway(tmp_path_factory.mktemp("resume-a"), text)
    try:
        second = start_gateway(tmp_path_factory.mktemp("resume-b"), text)
    except BaseException:
        first.stop()
        raise
    yield first, second, redis
    second.stop()
    first.stop()
    redis.stop()


@dataclass
class Opened:
    stream_id: str
    token: str
    request_id: str
    events: list[Event]


def parse(body: bytes) -> list[Event]:
    parser = SSEParser()
    return [event for event in parser.feed(body) + parser.close() if event.data]


def tokens(events: list[Event]) -> list[str]:
    return [orjson.loads(e.data)["token"] for e in events if e.event == "message"]


async def open_then_drop(url: str, tag: str, count: int, headers: dict[str, str] | None = None,
                         body: dict | None = None) -> Opened:
    """Start a resumable browser stream, read `count` token events, then drop the connection."""
    rid = uuid.uuid4().hex
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{url}/v1/stream/chat", json=body or {"prompt": "hi", "resumable": True},
                                      headers={"X-Mock-Tag": tag, "X-Request-Id": rid, **(headers or {})})
        assert response.status == 200, await response.text()
        parser, events = SSEParser(), []
        while len([e for e in events if e.data]) < count:
            events += parser.feed(await response.content.readany())
        response.close()
    return Opened(response.headers["X-Stream-Id"], response.headers["X-Stream-Token"], rid,
                  [e for e in events if e.data])


async def resume(url: str, opened: Opened, after: int, headers: dict[str, str] | None = None
                 ) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/v1/streams/{opened.stream_id}",
                               headers={"X-Stream-Token": opened.token, "Last-Event-ID": str(after),
                                        **(headers or {})}) as response:
            return response.status, await response.read()


def assert_rest_of_the_stream(first: list[Event], rest: list[Event]) -> None:
    """Together, what came before the drop and after the resume are the 40 tokens once each, in order,
    numbered 1.. without a gap, and the end event."""
    assert len(tokens(first) + tokens(rest)) == 40
    ids = [int(e.id or 0) for e in first + rest]
    assert ids == list(range(1, len(ids) + 1))
    assert rest[-1].event == "done"


async def test_a_dropped_client_resumes_with_last_event_id_and_gets_exactly_the_rest(
        gw: Gateway, paced_mock: Process) -> None:
    tag = uuid.uuid4().hex
    opened = await open_then_drop(gw.url, tag, 10, {"Authorization": f"Bearer {KEY}"})
    assert [int(e.id or 0) for e in opened.events] == list(range(1, 11))
    await asyncio.sleep(0.3)
    status, body = await resume(gw.url, opened, 10, {"Authorization": f"Bearer {KEY}"})
    assert status == 200
    assert body.startswith(b"retry: 1000\n\n")
    rest = parse(body)
    assert_rest_of_the_stream(opened.events, rest)
    assert len(tokens(rest)) == 30 and [int(e.id or 0) for e in rest][0] == 11
    [record] = paced_mock.mock_records(tag)
    assert (record["outcome"], record["tokens_sent"]) == ("completed", 40)  # one request, never closed early
    line = gw.log_for(opened.request_id)
    assert (line["outcome"], line["resumes"], line["client_disconnected"]) == ("ok", 1, False)
    assert len(line["resumed_on"]) == 1 and 200 <= line["client_disconnected_ms"] < 2000
    [event] = [e for e in gw.edge_events("resume") if e["stream_id"] == opened.stream_id]
    assert (event["after"], event["request_id"]) == (10, opened.request_id)
    print(f"\nresume after 300 ms: {len(tokens(rest))} tokens replayed and followed, "
          f"client_disconnected_ms {line['client_disconnected_ms']}")


async def test_a_resume_on_the_other_instance_reads_from_redis(redis_pair: tuple[Gateway, Gateway, Redis],
                                                               paced_mock: Process) -> None:
    first, second, _ = redis_pair
    tag = uuid.uuid4().hex
    opened = await open_then_drop(first.url, tag, 10)
    await asyncio.sleep(0.3)
    status, body = await resume(second.url, opened, 10)
    assert status == 200
    rest = parse(body)
    assert_rest_of_the_stream(opened.events, rest)
    assert len(tokens(rest)) == 30
    [record] = paced_mock.mock_records(tag)
    assert (record["outcome"], record["tokens_sent"]) == ("completed", 40)
    line = first.log_for(opened.request_id)
    assert (line["outcome"], line["resumes"]) == ("ok", 1)
    [event] = [e for e in second.edge_events("resume") if e["stream_id"] == opened.stream_id]
    assert line["resumed_on"] == [event["instance"]] and event["instance"] != event["owner"]
    assert [line for line in second.log_lines() if line["request_id"] == opened.request_id] == []


@pytest.mark.parametrize("path", ["/v1/stream/chat", "/v1/chat/completions"])
async def test_without_opting_in_a_stream_has_no_ids_and_no_stream_headers(gw: Gateway, path: str) -> None:
    body = {"prompt": "hi"} if path.endswith("chat") else {"model": "paced", "stream": True,
                                                          "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.url}{path}", json=body, headers={"Authorization": f"Bearer {KEY}",
                                                                       "X-Mock-Tokens": "3"}) as response:
            raw = await response.read()
    assert "X-Stream-Id" not in response.headers and "X-Stream-Token" not in response.headers
    assert b"id:" not in raw and b"retry:" not in raw


async def test_chat_completions_with_x_resumable_numbers_every_event_and_ends_with_done(gw: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.url}/v1/chat/completions",
                                json={"model": "paced", "stream": True, "messages": [{"role": "user", "content": "x"}]},
                                headers={"Authorization": f"Bearer {KEY}", "X-Resumable": "1",
                                         "X-Mock-Tokens": "3"}) as response:
            events = parse(await response.read())
    assert len(response.headers["X-Stream-Token"]) >= 22  # 128 bits or more, URL-safe base64
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    assert events[-1].data == "[DONE]"


async def test_nobody_resumes_in_the_window_so_the_upstream_is_closed_and_a_resume_gets_404(
        gw: Gateway, paced_mock: Process) -> None:
    tag = uuid.uuid4().hex
    opened = await open_then_drop(gw.url, tag, 2, {"Authorization": f"Bearer {KEY}", "X-Mock-Tokens": "400"})
    dropped_at = time.time()
    await wait_for(lambda: paced_mock.mock_records(tag)[0]["ended"] is not None, timeout=WINDOW_S + 5)
    [record] = paced_mock.mock_records(tag)
    assert record["outcome"] == "client_closed"
    assert WINDOW_S - 0.2 < record["ended"] - dropped_at < WINDOW_S + 1.0
    status, body = await resume(gw.url, opened, 2, {"Authorization": f"Bearer {KEY}"})
    assert status == 404 and orjson.loads(body)["error"]["code"] == "stream_not_found"
    line = gw.log_for(opened.request_id)
    assert (line["outcome"], line["error_code"], line["status"], line["client_disconnected"]) == (
        "client_disconnected", "resume_window_expired", 200, True)
    assert line["resumes"] == 0 and line["client_disconnected_ms"] >= WINDOW_S * 1000
    print(f"\nwindow {WINDOW_S}s: upstream closed {record['ended'] - dropped_at:.2f}s after the drop")


async def test_delete_closes_the_upstream_within_100_ms(gw: Gateway, paced_mock: Process) -> None:
    tag = uuid.uuid4().hex
    opened = await open_then_drop(gw.url, tag, 2, {"Authorization": f"Bearer {KEY}", "X-Mock-Tokens": "400"})
    async with aiohttp.ClientSession() as session:
        sent_at = time.time()
        async with session.delete(f"{gw.url}/v1/streams/{opened.stream_id}",
                                  headers={"X-Stream-Token": opened.token,
                                           "Authorization": f"Bearer {KEY}"}) as response:
            assert response.status == 204
    await wait_for(lambda: paced_mock.mock_records(tag)[0]["ended"] is not None)
    [record] = paced_mock.mock_records(tag)
    print(f"\nDELETE: upstream closed {1000 * (record['ended'] - sent_at):.1f} ms after it was sent")
    assert record["outcome"] == "client_closed" and record["ended"] - sent_at < 0.1
    line = gw.log_for(opened.request_id)
    assert (line["outcome"], line["error_code"], line["client_disconnected"]) == (
        "client_disconnected", "stream_cancelled", True)


async def test_delete_on_the_other_instance_closes_the_upstream_within_100_ms(
        redis_pair: tuple[Gateway, Gateway, Redis], paced_mock: Process) -> None:
    first, second, _ = redis_pair
    tag = uuid.uuid4().hex
    opened = await open_then_drop(first.url, tag, 2, {"X-Mock-Tokens": "400"})
    async with aiohttp.ClientSession() as session:
        sent_at = time.time()
        async with session.delete(f"{second.url}/v1/streams/{opened.stream_id}",
                                  headers={"X-Stream-Token": opened.token}) as response:
            assert response.status == 204
    await wait_for(lambda: paced_mock.mock_records(tag)[0]["ended"] is not None)
    [record] = paced_mock.mock_records(tag)
    print(f"\nDELETE via the other instance: upstream closed {1000 * (record['ended'] - sent_at):.1f} ms later")
    assert record["outcome"] == "client_closed" and record["ended"] - sent_at < 0.1


@pytest.mark.parametrize("case", ["wrong token", "wrong key", "no key", "unknown id"])
async def test_a_resume_or_cancel_without_the_streams_secrets_is_404(gw: Gateway, case: str) -> None:
    opened = await open_then_drop(gw.url, uuid.uuid4().hex, 1, {"Authorization": f"Bearer {KEY}",
                                                               "X-Mock-Tokens": "400"})
    headers = {"X-Stream-Token": opened.token, "Authorization": f"Bearer {KEY}", "Last-Event-ID": "1"}
    stream_id = opened.stream_id
    if case == "wrong token":
        headers["X-Stream-Token"] = opened.token[:-2] + ("AA" if not opened.token.endswith("AA") else "BB")
    elif case == "wrong key":
        headers["Authorization"] = f"Bearer {OTHER_KEY}"
    elif case == "no key":
        del headers["Authorization"]
    else:
        stream_id = uuid.uuid4().hex
    async with aiohttp.ClientSession() as session:
        for method in ("GET", "DELETE"):
            async with session.request(method, f"{gw.url}/v1/streams/{stream_id}", headers=headers) as response:
                body = orjson.loads(await response.read())
                assert (response.status, body["error"]["code"], body["error"]["type"]) == (
                    404, "stream_not_found", "invalid_request_error")
        async with session.delete(f"{gw.url}/v1/streams/{opened.stream_id}",
                                  headers={"X-Stream-Token": opened.token, "Authorization": f"Bearer {KEY}"}):
            pass


async def test_a_slow_resumer_cannot_make_the_gateway_buffer_past_the_bound(gw: Gateway,
                                                                            mock_upstream: Process) -> None:
    # A fast 1,000,000-token answer, nobody reading it quickly: the log stops at the bound.
    tag = uuid.uuid4().hex
    fast = {"X-Mock-Tokens": "1000000", "X-Mock-Inter-Token-Delay-Ms": "0", "X-Mock-First-Token-Delay-Ms": "0"}
    rss_before = rss_kib(gw.proc.pid)
    opened = await open_then_drop(gw.url, tag, 1, {"Authorization": f"Bearer {KEY}", **fast},
                                  body={"model": "fast", "prompt": "hi", "resumable": True})
    await wait_for(lambda: mock_upstream.mock_records(tag)[0]["ended"] is not None)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.url}/v1/streams/{opened.stream_id}",
                               headers={"X-Stream-Token": opened.token, "Authorization": f"Bearer {KEY}"}
                               ) as response:
            received = b""
            while chunk := await response.content.read(1000):  # a trickle
                received += chunk
                await asyncio.sleep(0.001)
    [record] = mock_upstream.mock_records(tag)
    events = parse(received)
    assert events[-1].event == "error" and orjson.loads(events[-1].data)["error"]["code"] == "resume_buffer_full"
    assert BOUND // 2 < len(received) < BOUND + 1024  # a batch that would pass the bound is not stored
    assert record["tokens_sent"] < 1_000_000 // 4
    rss_growth = rss_kib(gw.proc.pid) - rss_before
    print(f"\nbound {BOUND} B: replayed {len(received)} B, {len(events)} events; mock sent "
          f"{record['tokens_sent']} tokens; gateway RSS +{rss_growth} KiB")
    assert rss_growth < 20 * 1024
    line = gw.log_for(opened.request_id)
    assert (line["outcome"], line["error_code"], line["status"]) == ("unavailable", "resume_buffer_full", 200)


def test_resumable_streams_required_with_workers_and_no_redis_is_a_config_error(
        paced_mock: Process, mock_upstream: Process, tmp_path: Path) -> None:
    text = gateway_config(paced_mock, mock_upstream).replace("[resume]", "[resume]\nenabled = true")
    with pytest.raises(RuntimeError, match="resume.enabled: resumable streams with 2 workers need"):
        start_gateway(tmp_path, text, args=("--workers", "2"))


def redis_command_counts(redis: Redis) -> dict[str, int]:
    import redis as redis_client

    client = redis_client.Redis.from_url(redis.url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


async def test_the_redis_traffic_and_memory_of_one_resumable_stream(redis_pair: tuple[Gateway, Gateway, Redis]
                                                                    ) -> None:
    # Measured, not modelled: one 40-token stream (50 ms apart, ~2 s) read to its end by its client.
    import redis as redis_client

    first, _, redis = redis_pair
    await asyncio.sleep(1.0)  # the other tests' streams are over
    before = redis_command_counts(redis)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{first.url}/v1/stream/chat", json={"prompt": "hi", "resumable": True}) as response:
            stream_id = response.headers["X-Stream-Id"]
            body = await response.read()
    client = redis_client.Redis.from_url(redis.url)
    try:
        events_key = f"gateway:resume:{stream_id}:events"
        stored = client.memory_usage(events_key) or 0
        ttl_ms = client.pttl(events_key)
    finally:
        client.close()
    await asyncio.sleep(0.6)
    after = redis_command_counts(redis)
    calls = {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}
    for own in ("info", "hello", "memory|usage", "pttl"):  # this test's own, and connection handshakes
        calls.pop(own, None)
    total = sum(calls.values())
    print(f"\none resumable stream of {len(parse(body))} events ({len(body)} B): {total} Redis commands "
          f"{dict(sorted(calls.items()))}; its Redis Stream holds {stored} B, expiring in {ttl_ms} ms")
    assert calls["xadd"] == len(parse(body)) + 1  # each event, and the end mark
    assert total < 4 * len(parse(body)) + 40
    assert 0 < ttl_ms <= WINDOW_S * 1000  # kept for a late resume, then gone
    assert stored < 3 * len(body) + 4096


async def test_at_shutdown_a_resumable_stream_with_or_without_its_client_ends_in_the_drain_with_one_line(
        paced_mock: Process, mock_upstream: Process, tmp_path: Path) -> None:
    import signal

    text = gateway_config(paced_mock, mock_upstream).replace(
        "[server]", "[server]\ndrain_delay_s = 0.2\ndrain_timeout_s = 1", 1)
    gw = start_gateway(tmp_path, text)
    try:
        long = {"X-Mock-Tokens": "400"}
        dropped = await open_then_drop(gw.url, uuid.uuid4().hex, 2, long)  # its upstream runs on, unread
        rid = uuid.uuid4().hex
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{gw.url}/v1/stream/chat", json={"prompt": "hi", "resumable": True},
                                    headers={**long, "X-Request-Id": rid}) as response:
                await response.content.readline()
                signalled = time.monotonic()
                gw.proc.send_signal(signal.SIGTERM)
                events = parse(await response.read())
        code = gw.proc.wait(timeout=15)
        exited_after = time.monotonic() - signalled
    finally:
        gw.stop()
    last = events[-1]
    assert last.event == "error" and orjson.loads(last.data)["error"]["code"] == "gateway_shutting_down"
    assert [int(e.id or 0) for e in events] == list(range(1, len(events) + 1))
    lines = {line["request_id"]: line for line in gw.log_lines()}
    for request_id in (rid, dropped.request_id):
        assert (lines[request_id]["outcome"], lines[request_id]["error_code"]) == ("shutdown", "gateway_shutting_down")
    assert len(gw.log_lines()) == 2
    print(f"\nSIGTERM with two resumable streams (one unread): both ended by the drain; exit {code} "
          f"{exited_after:.2f}s after the signal")
    assert code == 0 and exited_after < 6


async def test_resumable_in_a_body_must_be_a_boolean(gw: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.url}/v1/stream/chat", json={"prompt": "hi", "resumable": "yes"},
                                headers={"Authorization": f"Bearer {KEY}"}) as response:
            body = orjson.loads(await response.read())
    assert (response.status, body["error"]["code"], body["error"]["param"]) == (400, "invalid_request", "resumable")


async def test_a_last_event_id_that_is_not_an_id_is_a_400(gw: Gateway) -> None:
    opened = await open_then_drop(gw.url, uuid.uuid4().hex, 1, {"Authorization": f"Bearer {KEY}",
                                                               "X-Mock-Tokens": "3"})
    status, body = await resume(gw.url, opened, 0, {"Authorization": f"Bearer {KEY}", "Last-Event-ID": "x"})
    assert (status, orjson.loads(body)["error"]["code"]) == (400, "invalid_request")


async def test_the_messages_api_with_x_resumable_numbers_every_event_and_ends_with_message_stop(gw: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.url}/v1/messages",
                                json={"model": "paced", "stream": True, "max_tokens": 50,
                                      "messages": [{"role": "user", "content": "x"}]},
                                headers={"x-api-key": KEY, "X-Resumable": "1", "X-Mock-Tokens": "3"}) as response:
            events = parse(await response.read())
    assert "X-Stream-Token" in response.headers
    assert [e.id for e in events] == [str(i) for i in range(1, len(events) + 1)]
    assert events[-1].event == "message_stop"
