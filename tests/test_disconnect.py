"""A client that goes away closes the upstream at once and leaks nothing;
a slow client never makes the gateway hold the whole response."""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import build_app
from gateway.config import parse_config
from gateway.record import RequestLog

from .conftest import Gateway, Process, await_log

MESSAGES = [{"role": "user", "content": "hi"}]
SLOW = {"X-Mock-Tokens": "200", "X-Mock-Inter-Token-Delay-Ms": "20", "X-Mock-First-Token-Delay-Ms": "0"}


async def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def read_tokens_then_close(url: str, path: str, body: dict, headers: dict[str, str], tokens: int) -> float:
    """Read until `tokens` content events arrived, then drop the connection; return when (wall clock)."""
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{url}{path}", json=body, headers=headers)
        seen = 0
        async for line in response.content:
            if line.startswith(b"data: ") and (b'"token"' in line or b'"content":"' in line) \
                    and b'"content":""' not in line:
                seen += 1
                if seen == tokens:
                    break
        closed_at = time.time()
        response.close()  # closes the connection, like a browser's AbortController
        return closed_at


@pytest.mark.parametrize(("path", "route"), [("/v1/chat/completions", "openai-only"),
                                             ("/v1/chat/completions", "anthropic-only"),
                                             ("/v1/stream/chat", "openai-only")])
async def test_client_abort_closes_the_upstream_within_100_ms(gateway: Gateway, mock_upstream: Process,
                                                              path: str, route: str) -> None:
    tag, rid = uuid.uuid4().hex, uuid.uuid4().hex
    body = {"model": route, "messages": MESSAGES, "stream": True} if path.endswith("completions") \
        else {"model": route, "prompt": "hi"}
    closed_at = await read_tokens_then_close(gateway.url, path, body,
                                             {**SLOW, "X-Mock-Tag": tag, "X-Request-Id": rid}, tokens=3)
    await wait_for(lambda: mock_upstream.mock_records(tag)[0]["ended"] is not None)
    [record] = mock_upstream.mock_records(tag)
    assert record["outcome"] == "client_closed"
    print(f"\nupstream closed {1000 * (record['ended'] - closed_at):.1f} ms after the client")
    assert record["ended"] - closed_at < 0.1
    line = gateway.log_for(rid)
    assert (line["outcome"], line["error_code"], line["client_disconnected"], line["status"]) == (
        "client_disconnected", "client_disconnected", True, 200)
    assert line["usage_source"] == "estimated" and line["completion_tokens"] >= 3


def in_process_config(mock_url: str, log_path: Path) -> dict:
    import tomllib

    return tomllib.loads(textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        [log]
        path = "{log_path}"
        [providers.oa]
        dialect = "openai"
        base_url = "{mock_url}/oa/v1"
        forward_headers = ["x-mock-"]
        max_connections = 50
        [routes.chat]
        arms = [{{ name = "only", provider = "oa", model = "m", weight = 100 }}]
        """))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_200_aborted_streams_leak_no_task_connection_or_fd(mock_upstream: Process, tmp_path: Path) -> None:
    # The gateway runs in this process so its tasks and descriptors can be counted.
    log_path = tmp_path / "requests.log"
    config = parse_config(in_process_config(mock_upstream.url, log_path), "test", {})
    log = RequestLog(str(log_path))
    server = TestServer(build_app(config, log=log), host="127.0.0.1", port=0, handler_cancellation=True)
    await server.start_server()
    try:
        tag = uuid.uuid4().hex
        headers = {**SLOW, "X-Mock-Tag": tag}
        body = {"model": "chat", "messages": MESSAGES, "stream": True}
        url = str(server.make_url("")).rstrip("/")
        await read_tokens_then_close(url, "/v1/chat/completions", body, headers, tokens=1)  # warm up
        await wait_for(lambda: all(r["ended"] for r in mock_upstream.mock_records(tag)))
        await asyncio.sleep(0.2)
        tasks_before, fds_before = len(asyncio.all_tasks()), open_fds()

        for _ in range(10):  # 200 streams, 20 at a time
            await asyncio.gather(*(read_tokens_then_close(url, "/v1/chat/completions", body, headers, tokens=2)
                                   for _ in range(20)))

        await wait_for(lambda: sum(1 for r in mock_upstream.mock_records(tag) if r["ended"]) == 201)
        records = mock_upstream.mock_records(tag)
        assert [r["outcome"] for r in records] == ["client_closed"] * 201
        await wait_for(lambda: len(asyncio.all_tasks()) <= tasks_before and open_fds() <= fds_before)
        print(f"\nafter 200 aborted streams: tasks {tasks_before} -> {len(asyncio.all_tasks())}, "
              f"fds {fds_before} -> {open_fds()}")
        assert len(asyncio.all_tasks()) == tasks_before
        assert open_fds() <= fds_before
        lines = await await_log(log_path, 201)
        assert all(line["client_disconnected"] for line in lines)
    finally:
        await server.close()
        log.close()


async def test_slow_reader_does_not_make_the_gateway_buffer_the_response(gateway: Gateway,
                                                                         mock_upstream: Process) -> None:
    # A 1,000,000-token response (about 180 MB of events) read at a trickle.
    tag = uuid.uuid4().hex
    headers = {"X-Mock-Tokens": "1000000", "X-Mock-Inter-Token-Delay-Ms": "0", "X-Mock-First-Token-Delay-Ms": "0",
               "X-Mock-Tag": tag}
    rss_before = rss_kib(gateway.proc.pid)
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{gateway.url}/v1/chat/completions", headers=headers,
                                      json={"model": "openai-only", "messages": MESSAGES, "stream": True})
        received = 0
        for _ in range(30):  # 3 s at 100 bytes per 100 ms
            received += len(await response.content.read(100))
            await asyncio.sleep(0.1)
        [record] = mock_upstream.mock_records(tag)
        rss_during = rss_kib(gateway.proc.pid)
        response.close()
    sent_bytes = record["tokens_sent"] * 190  # an OpenAI chunk event is about 190 bytes
    # Backpressure reached the provider: only socket buffers' worth is in flight, not the response.
    print(f"\nslow reader: mock sent {record['tokens_sent']} tokens (~{sent_bytes // 1024} KiB), "
          f"client read {received} B, gateway RSS +{rss_during - rss_before} KiB")
    assert sent_bytes < 40 * 1024 * 1024
    assert record["tokens_sent"] < 1_000_000 // 4
    assert rss_during - rss_before < 20 * 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_without_handler_cancellation_the_next_write_notices_the_client_left(
        mock_upstream: Process, tmp_path: Path) -> None:
    # Hosted by a runner that does not cancel handlers, the relay still ends at its next write.
    log_path = tmp_path / "requests.log"
    config = parse_config(in_process_config(mock_upstream.url, log_path), "test", {})
    log = RequestLog(str(log_path))
    server = TestServer(build_app(config, log=log), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        tag = uuid.uuid4().hex
        url = str(server.make_url("")).rstrip("/")
        await read_tokens_then_close(url, "/v1/chat/completions",
                                     {"model": "chat", "messages": MESSAGES, "stream": True},
                                     {**SLOW, "X-Mock-Tag": tag}, tokens=2)
        await wait_for(lambda: mock_upstream.mock_records(tag)[0]["ended"] is not None)
        [record] = mock_upstream.mock_records(tag)
        assert record["outcome"] == "client_closed" and record["tokens_sent"] < 200
        [line] = await await_log(log_path, 1)
        assert (line["outcome"], line["client_disconnected"]) == ("client_disconnected", True)
    finally:
        await server.close()
        log.close()
