"""Benchmark for ``gateway report`` (gateway/report/).

Generates a seeded synthetic request log (schema v1) into a temp file, then
measures in the same run:

* baseline: read every line and ``orjson.loads`` it -- the unavoidable floor
  for any report over this file;
* report:   ``gateway.report.main([file])`` end to end (load, statistics,
  text rendering; stdout discarded).

and prints ``report: X s, baseline parse: Y s, ratio Zx``.  The ratio is what
to compare across machines; the absolute times depend on the CPU.

    .venv/bin/python bench/bench_report.py [--lines N] [--gzip] [--seed S] [--keep]
    .venv/bin/python bench/bench_report.py --log FILE    # an existing (real) log
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import math
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import report  # noqa: E402

# arm -> (share, ttft lognormal median ms, sigma, error rate, price per 1k completion tokens)
ARMS = {
    "control": (0.5, 420.0, 0.5, 0.020, 0.0060),
    "canary": (0.5, 330.0, 0.5, 0.015, 0.0045),
}
ERRORS = ("upstream_error", "timeout_first_token", "timeout_idle", "client_error",
          "client_disconnected", "truncated")


def write_log(path: str, lines: int, seed: int = 1, gz: bool = False) -> None:
    """Write ``lines`` schema-v1 request lines spread over one day."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 26, tzinfo=UTC)
    step = 86400.0 / max(lines, 1)
    names = list(ARMS)
    weights = [ARMS[a][0] for a in names]
    rec = {
        "schema": 1, "event": "request", "ts": "", "request_id": "", "endpoint": "stream_chat",
        "route": "chat", "arm": "", "provider": "", "upstream_model": "",
        "user_key_hash": "", "user_key_source": "user", "stream": True, "status": 200,
        "outcome": "ok", "attempts": 1, "fallback_used": False, "upstream_connect_ms": 0.0,
        "ttfb_ms": 0.0, "ttft_ms": 0.0, "latency_ms": 0.0, "max_gap_ms": 0.0, "p95_gap_ms": 0.0,
        "gateway_overhead_ms": 0.0, "events_out": 0, "bytes_out": 0, "prompt_tokens": 0,
        "completion_tokens": 0, "usage_source": "upstream", "cost_usd": 0.0,
        "client_disconnected": False, "error_code": None, "error_message": None,
    }
    opener = gzip.open(path, "wb", compresslevel=1) if gz else open(path, "wb")
    with opener as f:
        buf = []
        for i in range(lines):
            arm = rng.choices(names, weights)[0]
            _, med, sigma, err, price = ARMS[arm]
            ts = start + timedelta(seconds=i * step)
            ttft = round(rng.lognormvariate(math.log(med), sigma), 1)
            ct = rng.randint(5, 600)
            pt = rng.randint(10, 2000)
            gen = ct * rng.uniform(8, 25)
            outcome = "ok" if rng.random() >= err else rng.choice(ERRORS)
            failed_early = outcome in ("upstream_error", "timeout_first_token", "client_error")
            rec["ts"] = ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            rec["request_id"] = f"{rng.getrandbits(64):016x}"
            rec["arm"] = arm
            rec["provider"] = f"prov-{arm}"
            rec["upstream_model"] = f"model-{arm}"
            rec["user_key_hash"] = f"{rng.getrandbits(64):016x}"
            rec["outcome"] = outcome
            rec["status"] = 200 if outcome in ("ok", "truncated", "timeout_idle") else 502
            rec["fallback_used"] = rng.random() < 0.01
            rec["upstream_connect_ms"] = round(ttft * 0.3, 1)
            rec["ttfb_ms"] = round(ttft * 0.9, 1)
            rec["ttft_ms"] = None if failed_early else ttft
            rec["latency_ms"] = round(ttft + (0 if failed_early else gen), 1)
            rec["max_gap_ms"] = round(rng.uniform(20, 200), 1)
            rec["p95_gap_ms"] = round(rng.uniform(15, 60), 1)
            rec["gateway_overhead_ms"] = round(rng.uniform(0.5, 4), 1)
            rec["events_out"] = 0 if failed_early else ct + 2
            rec["bytes_out"] = 0 if failed_early else ct * 180
            rec["prompt_tokens"] = pt
            rec["completion_tokens"] = 0 if failed_early else ct
            rec["cost_usd"] = round((pt * 0.25 + (0 if failed_early else ct)) * price / 1000, 8)
            rec["error_code"] = None if outcome == "ok" else outcome
            rec["error_message"] = None if outcome == "ok" else f"{outcome} (synthetic)"
            buf.append(orjson.dumps(rec))
            if len(buf) >= 10000:
                f.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            f.write(b"\n".join(buf) + b"\n")


def baseline_parse(path: str) -> float:
    """Seconds to read every line and orjson.loads it (gzip-aware)."""
    t0 = time.perf_counter()
    with open(path, "rb") as raw:
        f = gzip.GzipFile(fileobj=raw) if raw.peek(2)[:2] == b"\x1f\x8b" else raw
        loads = orjson.loads
        for line in f:
            loads(line)
    return time.perf_counter() - t0


def run_report(path: str) -> tuple[float, int]:
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        rc = report.main([path])
    return time.perf_counter() - t0, rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=1_000_000, help="log lines (default 1000000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--gzip", action="store_true", help="also benchmark a gzip copy of the log")
    p.add_argument("--keep", action="store_true", help="keep the generated file(s), print paths")
    p.add_argument("--log", metavar="FILE",
                   help="benchmark this existing log (plain or gzip) instead of generating one")
    args = p.parse_args(argv)

    if args.log:
        base = baseline_parse(args.log)
        took, rc = run_report(args.log)
        print(f"[{args.log}] report: {took:.1f} s, baseline parse: {base:.1f} s, "
              f"ratio {took / base:.2f}x (exit {rc})")
        return 0 if rc == 0 else 1

    tmp = tempfile.mkdtemp(prefix="bench-report-")
    paths = [os.path.join(tmp, "requests.log")]
    t0 = time.perf_counter()
    write_log(paths[0], args.lines, args.seed)
    if args.gzip:
        paths.append(paths[0] + ".gz")
        with open(paths[0], "rb") as src, gzip.open(paths[1], "wb", compresslevel=6) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    size = os.path.getsize(paths[0])
    print(f"generated {args.lines:,} lines ({size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s"
          f" -> {tmp}")
    try:
        for path in paths:
            kind = "gzip" if path.endswith(".gz") else "plain"
            base = baseline_parse(path)   # also warms the page cache for the report run
            took, rc = run_report(path)
            if rc != 0:
                print(f"report exited with {rc}", file=sys.stderr)
                return 1
            print(f"[{kind}] report: {took:.1f} s, baseline parse: {base:.1f} s, "
                  f"ratio {took / base:.2f}x  ({args.lines / took / 1e3:,.0f}k lines/s)")
    finally:
        if args.keep:
            print("kept:", *paths)
        else:
            for path in paths:
                os.unlink(path)
            os.rmdir(tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
