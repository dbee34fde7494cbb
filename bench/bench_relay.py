"""What the relay costs: the same streams straight from the mock and through the gateway.

    python bench/bench_relay.py [--streams 300] [--concurrency 20] [--tokens 200] [--rounds 3]

Starts the built-in mock and a gateway as real processes on loopback, then,
alternating in each round so that both see the same machine load:

  baseline   the client reads each stream straight from the mock (OpenAI dialect)
  openai     the same stream through the gateway, relayed as raw upstream bytes
  anthropic  the mock's Anthropic stream through the gateway, translated to OpenAI chunks

The mock sends tokens with no delay, so the figures show the relay's own cost,
not an LLM's pace. Reported per path (median over rounds): streams per second,
time to first token p50, and the gateway's CPU time per relayed event; each
as a ratio to the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def start(args: list[str], ready: bytes, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    err = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=err)
    pattern = re.compile(re.escape(ready) + rb" on http://127\.0\.0\.1:(\d+)")
    for _ in range(400):
        if match := pattern.search(log.read_bytes()):
            return proc, int(match.group(1))
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{args[0]} did not start: {log.read_text()}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


async def one_stream(session: aiohttp.ClientSession, url: str, body: dict, headers: dict) -> tuple[float, int]:
    started = time.perf_counter()
    ttft = None
    events = 0
    async with session.post(url, json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        async for line in response.content:
            if line.startswith(b"data:"):
                events += 1
                if ttft is None and b'"content":"' in line and b'"content":""' not in line \
                        or ttft is None and b'"text_delta"' in line:
                    ttft = time.perf_counter() - started
    return (ttft if ttft is not None else float("nan")), events


async def run_path(url: str, body: dict, streams: int, concurrency: int, tokens: int,
                   gateway_pid: int | None) -> dict[str, float]:
    headers = {"X-Mock-Tokens": str(tokens), "X-Mock-First-Token-Delay-Ms": "0", "X-Mock-Inter-Token-Delay-Ms": "0"}
    gate = asyncio.Semaphore(concurrency)
    ttfts: list[float] = []
    events = 0
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def bounded(session: aiohttp.ClientSession) -> None:
        nonlocal events
        async with gate:
            ttft, n = await one_stream(session, url, body, headers)
            ttfts.append(ttft)
            events += n

    async with aiohttp.ClientSession(connector=connector) as session:
        cpu_before = cpu_seconds(gateway_pid) if gateway_pid else 0.0
        started = time.perf_counter()
        await asyncio.gather(*(bounded(session) for _ in range(streams)))
        wall = time.perf_counter() - started
        cpu = cpu_seconds(gateway_pid) - cpu_before if gateway_pid else 0.0
    return {"streams_per_s": streams / wall, "ttft_p50_ms": statistics.median(ttfts) * 1000,
            "gateway_cpu_us_per_event": cpu / events * 1e6 if gateway_pid else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    mock, mock_port = start(["mock-upstream", "--port", "0"], b"mock provider", tmp / "mock.err")
    mock_url = f"http://127.0.0.1:{mock_port}"
    config = tmp / "gateway.toml"
    config.write_text(textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        port = 0
        [log]
        path = "{tmp / 'requests.log'}"
        [providers.oa]
        dialect = "openai"
        base_url = "{mock_url}/oa/v1"
        forward_headers = ["x-mock-"]
        [providers.an]
        dialect = "anthropic"
        base_url = "{mock_url}/an"
        forward_headers = ["x-mock-"]
        [routes.oa]
        arms = [{{ name = "only", provider = "oa", model = "m", weight = 100 }}]
        [routes.an]
        arms = [{{ name = "only", provider = "an", model = "m", weight = 100 }}]
        """))
    gateway, gw_port = start(["serve", "--config", str(config)], b"gateway listening", tmp / "gateway.err")
    gw_url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    messages = [{"role": "user", "content": "benchmark"}]
    paths = {
        "baseline": (f"{mock_url}/oa/v1/chat/completions", {"model": "m", "messages": messages, "stream": True},
                     None),
        "openai": (gw_url, {"model": "oa", "messages": messages, "stream": True}, gateway.pid),
        "anthropic": (gw_url, {"model": "an", "messages": messages, "stream": True}, gateway.pid),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
    try:
        asyncio.run(run_path(*paths["openai"][:2], 20, 5, args.tokens, None))  # warm up pools
        for _ in range(args.rounds):
            for name, (url, body, pid) in paths.items():
                results[name].append(asyncio.run(run_path(url, body, args.streams, args.concurrency,
                                                          args.tokens, pid)))
    finally:
        for proc in (gateway, mock):
            proc.terminate()
            proc.wait()

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    base_rate, base_ttft = med("baseline", "streams_per_s"), med("baseline", "ttft_p50_ms")
    print(f"{args.streams} streams x {args.tokens} tokens, {args.concurrency} concurrent, "
          f"median of {args.rounds} rounds")
    for name in paths:
        rate, ttft, cpu = med(name, "streams_per_s"), med(name, "ttft_p50_ms"), med(name, "gateway_cpu_us_per_event")
        cpu_text = f"  gateway CPU {cpu:5.1f} us/event" if name != "baseline" else ""
        print(f"{name:<10} {rate:7.1f} streams/s ({rate / base_rate:4.2f}x)   "
              f"TTFT p50 {ttft:6.1f} ms ({ttft / base_ttft:4.2f}x){cpu_text}")


if __name__ == "__main__":
    main()
