"""Hedged first tokens against a heavy TTFT tail: TTFT percentiles and the extra upstream requests.

    python bench/bench_hedge.py [--requests 300] [--concurrency 30] [--rounds 2] [--seed 1]

Two mock providers as real processes: the arm's provider gives 90% of first
tokens after 200 ms and 10% after 3 s (a seeded choice per request, the same
requests slow in every configuration), the fallback after 300 ms. The arm's
provider forwards the mock's knobs and the fallback does not, so the slow
header slows the arm alone. One gateway serves three routes over them:

  none      no hedging (the baseline: a slow first token is waited out)
  500ms     hedge = { after_ms = 500, budget_percent = 15 }
  p95       hedge = { after_ms = "p95", budget_percent = 15 }

The configurations alternate within each round so they share the machine's
load. Reported per configuration over all rounds: client-side TTFT p50/p95/p99
(ms), each p99 as a ratio to the baseline's, and extra upstream requests (the
log's attempts beyond one per request) as a share of requests.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
ROUTES = {"none": "", "500ms": 'hedge = { after_ms = 500, budget_percent = 15 }',
          "p95": 'hedge = { after_ms = "p95", budget_percent = 15 }'}


def start(args: list[str], ready: bytes, log: Path) -> subprocess.Popen[bytes]:
    err = open(log, "wb")
    return subprocess.Popen([sys.executable, "-m", "gateway", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=err)


def port_of(log: Path, ready: bytes) -> int:
    pattern = re.compile(re.escape(ready) + rb" on http://127\.0\.0\.1:(\d+)")
    for _ in range(400):
        if match := pattern.search(log.read_bytes()):
            return int(match.group(1))
        time.sleep(0.05)
    raise SystemExit(f"did not start: {log.read_text()}")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(q * len(ordered) + 0.999999) - 1)]


async def one(session: aiohttp.ClientSession, url: str, route: str, slow: bool) -> float:
    headers = {"X-Mock-First-Token-Delay-Ms": "3000" if slow else "200"}
    body = {"model": route, "stream": True, "messages": [{"role": "user", "content": "benchmark"}]}
    started = time.perf_counter()
    async with session.post(url, json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        ttft = None
        async for line in response.content:
            if ttft is None and line.startswith(b"data:") and b'"content":"' in line and b'"content":""' not in line:
                ttft = time.perf_counter() - started
    assert ttft is not None
    return ttft * 1000


async def run(url: str, route: str, slow: list[bool], concurrency: int) -> list[float]:
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def bounded(is_slow: bool) -> float:
            async with gate:
                return await one(session, url, route, is_slow)
        return list(await asyncio.gather(*(bounded(s) for s in slow)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-hedge-"))
    mocks = [start(["mock-upstream", "--port", "0", "--tokens", "20", "--first-token-delay-ms", delay,
                    "--inter-token-delay-ms", "5"], b"mock provider", tmp / f"mock{delay}.err")
             for delay in ("200", "300")]
    procs = list(mocks)
    try:
        arm_url, fallback_url = (f"http://127.0.0.1:{port_of(tmp / f'mock{d}.err', b'mock provider')}"
                                 for d in ("200", "300"))
        routes = "\n".join(textwrap.dedent(f"""
            [routes.{name}]
            arms = [{{ name = "only", provider = "arm", model = "m", weight = 100 }}]
            fallback = [{{ provider = "fallback", model = "m" }}]
            {hedge}
            """) for name, hedge in ROUTES.items())
        config = tmp / "gateway.toml"
        log = tmp / "requests.log"
        config.write_text(textwrap.dedent(f"""
            [server]
            host = "127.0.0.1"
            port = 0
            [log]
            path = "{log}"
            [providers.arm]
            dialect = "openai"
            base_url = "{arm_url}/arm/v1"
            forward_headers = ["x-mock-"]
            [providers.fallback]
            dialect = "openai"
            base_url = "{fallback_url}/fallback/v1"
            """) + routes)
        procs.append(start(["serve", "--config", str(config)], b"gateway listening", tmp / "gateway.err"))
        url = f"http://127.0.0.1:{port_of(tmp / 'gateway.err', b'gateway listening')}/v1/chat/completions"
        rng = random.Random(args.seed)
        slow = [rng.random() < 0.10 for _ in range(args.requests)]
        asyncio.run(run(url, "none", [False] * 10, 5))  # warm the pools
        ttfts: dict[str, list[float]] = {name: [] for name in ROUTES}
        for _ in range(args.rounds):
            for name in ROUTES:
                ttfts[name] += asyncio.run(run(url, name, slow, args.concurrency))
        time.sleep(0.5)
        lines = [orjson.loads(x) for x in log.read_bytes().splitlines() if x.strip()]
        print(f"{args.requests} requests x {args.rounds} rounds per configuration, concurrency {args.concurrency}, "
              f"{sum(slow)} of {args.requests} slow (3 s) per round")
        print("| configuration | TTFT p50 ms | p95 ms | p99 ms | p99 vs none | extra upstream requests | hedged |")
        print("|---|---|---|---|---|---|---|")
        base_p99 = quantile(ttfts["none"], 0.99)
        for name in ROUTES:
            mine = [x for x in lines if x.get("event") == "request" and x["route"] == name]
            extra = sum(x["attempts"] - 1 for x in mine) / len(mine)
            hedged = sum(x["hedged"] for x in mine) / len(mine)
            t = ttfts[name]
            print(f"| {name} | {statistics.median(t):.0f} | {quantile(t, 0.95):.0f} | {quantile(t, 0.99):.0f} | "
                  f"{quantile(t, 0.99) / base_p99:.2f}x | {extra:.1%} | {hedged:.1%} |")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
