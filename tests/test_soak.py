"""5,000 mixed requests against one gateway worker: afterwards nothing is left behind."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Gateway, Process, config_text, start_gateway

REQUESTS = 5_000
CONCURRENCY = 50
KINDS = ["stream", "unary", "anthropic", "aborted", "faulted"]


def process_figures(pid: int) -> tuple[int, int]:
    """Open file descriptors and resident memory (KiB) of a process, from /proc."""
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    return fds, rss


async def gauges(gw: Gateway, session: aiohttp.ClientSession) -> dict[str, float]:
    async with session.get(f"{gw.url}/metrics") as response:
        text = await response.text()
    values: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("gateway_event_loop_tasks", "gateway_upstream_connections_in_use",
                               "gateway_requests_in_flight"):
                values[sample.name] += sample.value
    return dict(values)


async def one(session: aiohttp.ClientSession, gw: Gateway, kind: str, rid: str) -> None:
    body = {"model": "openai-only" if kind != "anthropic" else "anthropic-only",
            "messages": [{"role": "user", "content": "soak"}], "stream": kind != "unary"}
    headers = {"X-Request-Id": rid}
    if kind == "faulted":
        headers["X-Mock-Fault"] = random.choice(["status=500", "drop_after=3", "error_after=2", "truncate_after=4"])
    async with session.post(f"{gw.url}/v1/chat/completions", json=body, headers=headers) as response:
        if kind == "aborted":
            await response.content.readany()
            response.close()  # gone mid-stream
        else:
            await response.read()


async def run(gw: Gateway, kinds: list[str], prefix: str) -> None:
    queue = iter(enumerate(kinds))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        async def worker() -> None:
            for i, kind in queue:
                await one(session, gw, kind, f"{prefix}-{i}")

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def settle(gw: Gateway, idle: tuple[dict[str, float], int]) -> tuple[dict[str, float], int]:
    """Gauges and open fds, once they are back to `idle` (idle pooled connections close after
    keepalive_s), or as they are after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        async with aiohttp.ClientSession() as probe:
            now = await gauges(gw, probe), process_figures(gw.proc.pid)[0]
        if now == idle or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.2)


async def test_5000_mixed_requests_leave_fds_tasks_pool_and_memory_as_they_were(
        mock_upstream: Process, tmp_path: Path) -> None:
    # Idle pooled upstream connections close after keepalive_s: short here, so "idle" is reached soon.
    text = config_text(mock_upstream.url).replace('forward_headers = ["x-mock-"]',
                                                  'forward_headers = ["x-mock-"]\nkeepalive_s = 0.5')
    gw = start_gateway(tmp_path, text)
    rng = random.Random(7)
    kinds = rng.choices(KINDS, weights=[40, 15, 15, 15, 15], k=REQUESTS)
    try:
        # Warm-up at the same concurrency: every path used once, buffers and pools at their working
        # size, so what follows measures growth (a leak), not the first peak.
        await run(gw, rng.choices(KINDS, k=500), "warm")
        await asyncio.sleep(1.5)  # the warm-up's connections closed, both sides
        async with aiohttp.ClientSession() as probe:
            idle = await gauges(gw, probe), process_figures(gw.proc.pid)[0]
        rss_before = process_figures(gw.proc.pid)[1]
        started = time.monotonic()
        await run(gw, kinds, "soak")
        elapsed = time.monotonic() - started
        after = await settle(gw, idle)
        rss_after = process_figures(gw.proc.pid)[1]
        lines = [line for line in gw.log_lines() if str(line.get("request_id", "")).startswith("soak-")]
    finally:
        gw.stop()
    ids = Counter(line["request_id"] for line in lines)
    outcomes = Counter(line["outcome"] for line in lines)
    growth = (rss_after - rss_before) / rss_before
    print(f"\nsoak: {REQUESTS} requests in {elapsed:.1f} s ({REQUESTS / elapsed:.0f}/s) at concurrency {CONCURRENCY}; "
          f"outcomes {dict(outcomes)}; fds {idle[1]} -> {after[1]}; RSS {rss_before} -> {rss_after} KiB "
          f"({100 * growth:+.1f}%); gauges {idle[0]} -> {after[0]}")
    assert len(ids) == REQUESTS and set(ids.values()) == {1}, "exactly one log line per request"
    assert after[0] == idle[0], "tasks, pool connections and in-flight requests back to idle"
    assert after[1] <= idle[1], "open file descriptors back to idle"
    assert growth < 0.10
