"""Graceful shutdown (cli.py `_drain`, inflight.py): /readyz first, then the drain window, then the cut.

Every test signals a real gateway process and watches it go: what /readyz
says, when the listener closes, how each open stream ends, that every request
has its one log line, and that the process exits 0.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.errors import GatewayError
from gateway.inflight import InFlight

from .conftest import Gateway, Process, config_text, read_log, start_gateway

MESSAGES = [{"role": "user", "content": "hi"}]


def draining_gateway(mock_upstream: Process, tmp_path: Path, delay_s: float, window_s: float,
                     args: tuple[str, ...] = ()) -> Gateway:
    text = config_text(mock_upstream.url).replace(
        "[server]", f"[server]\ndrain_delay_s = {delay_s}\ndrain_timeout_s = {window_s}", 1)
    return start_gateway(tmp_path, text, args=args)


async def exit_code(gw: Gateway, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while gw.proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert gw.proc.poll() is not None, "the gateway did not exit"
    return gw.proc.returncode


async def status_of(url: str) -> int | None:
    """The status of a GET on a new connection, or None if the connection is refused."""
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers={"Connection": "close"}) as response:
                return response.status
    except aiohttp.ClientConnectorError:
        return None


async def test_readyz_turns_503_while_the_listener_still_accepts_then_it_stops(mock_upstream: Process,
                                                                              tmp_path: Path) -> None:
    delay_s = 1.5
    gw = draining_gateway(mock_upstream, tmp_path, delay_s=delay_s, window_s=1)
    try:
        assert await status_of(f"{gw.url}/readyz") == 200
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        assert await status_of(f"{gw.url}/readyz") == 503  # a balancer takes the instance out...
        assert await status_of(f"{gw.url}/healthz") == 200  # ...while new connections are still served
        while await status_of(f"{gw.url}/healthz") is not None:
            assert time.monotonic() - signalled < delay_s + 3
            await asyncio.sleep(0.05)
        refused_after = time.monotonic() - signalled
        code = await exit_code(gw)
    finally:
        gw.stop()
    print(f"\nSIGTERM: /readyz 503 at once; new connections refused after {refused_after:.2f}s "
          f"(drain_delay_s {delay_s:g}); exit {code}")
    assert refused_after >= delay_s - 0.1
    assert code == 0


async def open_stream(session: aiohttp.ClientSession, url: str, path: str, tokens: int,
                      delay_ms: int) -> tuple[str, aiohttp.ClientResponse]:
    """A stream, returned once it has begun (the gateway answers 200 with the first token)."""
    rid = uuid.uuid4().hex
    body = {"model": "openai-only", "messages": MESSAGES, "stream": True} if path.endswith("completions") \
        else {"model": "openai-only", "prompt": "hi"}
    response = await session.post(f"{url}{path}", json=body, headers={
        "X-Request-Id": rid, "X-Mock-Tokens": str(tokens), "X-Mock-Inter-Token-Delay-Ms": str(delay_ms)})
    assert response.status == 200
    return rid, response


def last_event(body: bytes) -> bytes:
    events = [event for event in body.split(b"\n\n") if event.strip()]
    return events[-1] if events else b""


async def test_sigterm_during_20_streams_finishes_those_within_the_window_and_ends_the_rest_with_an_error_event(
        mock_upstream: Process, tmp_path: Path) -> None:
    delay_s, window_s = 0.3, 2.0
    gw = draining_gateway(mock_upstream, tmp_path, delay_s=delay_s, window_s=window_s)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            # 10 streams that end about a second after the signal, 10 that would take 20 s; both endpoints.
            plans = [("/v1/chat/completions", 10, 100)] * 6 + [("/v1/stream/chat", 10, 100)] * 4 \
                + [("/v1/chat/completions", 200, 100)] * 6 + [("/v1/stream/chat", 200, 100)] * 4
            streams = await asyncio.gather(*(open_stream(session, gw.url, *plan) for plan in plans))
            signalled = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            bodies = await asyncio.gather(*(response.read() for _, response in streams))
        code = await exit_code(gw)
        exited_after = time.monotonic() - signalled
    finally:
        gw.stop()
    ids = [rid for rid, _ in streams]
    short, long = bodies[:10], bodies[10:]
    assert all(last_event(b) in (b"data: [DONE]",) or last_event(b).startswith(b"event: done") for b in short)
    for body in long:
        event = last_event(body)
        payload = event.split(b"data: ", 1)[1]
        assert orjson.loads(payload)["error"]["code"] == "gateway_shutting_down"
        assert event.startswith(b"data: ") or event.startswith(b"event: error")
    lines = {line["request_id"]: line for line in read_log(gw.log_path, 20)}
    assert set(lines) == set(ids)
    assert [lines[rid]["outcome"] for rid in ids[:10]] == ["ok"] * 10
    for rid in ids[10:]:
        line = lines[rid]
        assert (line["outcome"], line["error_code"], line["status"], line["client_disconnected"]) == (
            "shutdown", "gateway_shutting_down", 200, False)
    print(f"\nSIGTERM during 20 streams: 10 finished within the {window_s:g}s window, 10 ended with "
          f"gateway_shutting_down; exit {code} {exited_after:.2f}s after the signal; 20 log lines")
    assert code == 0
    assert delay_s + window_s <= exited_after < delay_s + window_s + 4


async def test_a_request_still_opening_when_the_window_ends_gets_a_503(mock_upstream: Process,
                                                                      tmp_path: Path) -> None:
    gw = draining_gateway(mock_upstream, tmp_path, delay_s=0, window_s=0.5)
    try:
        async with aiohttp.ClientSession() as session:
            async def stalled(stream: bool) -> tuple[str, int, bytes]:
                rid = uuid.uuid4().hex
                async with session.post(f"{gw.url}/v1/chat/completions",
                                        json={"model": "openai-only", "messages": MESSAGES, "stream": stream},
                                        headers={"X-Request-Id": rid, "X-Mock-Fault": "stall=first"}) as response:
                    return rid, response.status, await response.read()

            requests = [asyncio.create_task(stalled(stream)) for stream in (True, False)]
            await asyncio.sleep(0.5)  # both are waiting for a first token that never comes
            gw.proc.send_signal(signal.SIGTERM)
            answers = await asyncio.gather(*requests)
        code = await exit_code(gw)
    finally:
        gw.stop()
    for rid, status, body in answers:
        assert status == 503
        assert orjson.loads(body)["error"]["code"] == "gateway_shutting_down"
        line = gw.log_for(rid)
        assert (line["outcome"], line["error_code"], line["status"]) == ("shutdown", "gateway_shutting_down", 503)
    assert code == 0


async def test_with_workers_the_parent_passes_sigint_on_and_each_worker_drains(mock_upstream: Process,
                                                                              tmp_path: Path) -> None:
    gw = draining_gateway(mock_upstream, tmp_path, delay_s=0, window_s=1, args=("--workers", "2"))
    try:
        connector = aiohttp.TCPConnector(force_close=True)  # new connections: both workers get streams
        async with aiohttp.ClientSession(connector=connector) as session:
            streams = await asyncio.gather(*(open_stream(session, gw.url, "/v1/chat/completions", 200, 100)
                                             for _ in range(12)))
            signalled = time.monotonic()
            gw.proc.send_signal(signal.SIGINT)
            bodies = await asyncio.gather(*(response.read() for _, response in streams))
        code = await exit_code(gw)
        exited_after = time.monotonic() - signalled
    finally:
        gw.stop()
    stderr = gw.stderr_path.read_text()
    per_worker = [int(n) for n in re.findall(r"worker \d+: stopped accepting .*?; (\d+) requests in flight", stderr)]
    print(f"\n--workers 2, SIGINT during 12 streams {per_worker}: exit {code} {exited_after:.2f}s after the signal")
    assert code == 0
    assert len(per_worker) == 2 and sum(per_worker) == 12  # each worker drained its own streams
    assert len(re.findall(r"worker \d+: stopped$", stderr, re.MULTILINE)) == 2
    assert all(b"gateway_shutting_down" in last_event(body) for body in bodies)
    lines = read_log(gw.log_path, 12)
    assert {line["outcome"] for line in lines} == {"shutdown"}


# --- the register's rules, without a server ----------------------------------------------------

async def test_cut_ends_a_committed_stream_through_its_callback_and_cancels_anything_else() -> None:
    flight = InFlight(max_streams=10)
    ended: list[str] = []

    async def request(committed: bool) -> None:
        ticket = flight.admit()
        if committed:
            ticket.on_cut(lambda: ended.append("upstream closed"))
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise
        finally:
            flight.release(ticket)

    tasks = [asyncio.create_task(request(committed)) for committed in (True, False)]
    await asyncio.sleep(0.01)
    assert flight.cut() == 2
    await asyncio.sleep(0.01)
    assert sorted(ended) == ["cancelled", "upstream closed"]
    tasks[0].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_after_the_cut_no_request_is_admitted() -> None:
    flight = InFlight(max_streams=10)
    flight.cut()
    with pytest.raises(GatewayError) as refused:
        flight.admit()
    assert (refused.value.status, refused.value.code) == (503, "gateway_shutting_down")
