"""Benchmark for ``gateway report`` (gateway/report/).

Generates a seeded synthetic request log (schema v1) into a temp directory,
then measures in the same run, on the same input:

* baseline: DuckDB alone -- ``read_ndjson`` of the log, requests and TTFT
  p50/p95/p99 per arm (count plus quantiles, nothing else), from its
  connection to its close (its query alone is shown beside);
* report:   ``gateway.report.main([input])`` end to end (DuckDB scan and
  classification of every line, statistics, text rendering; stdout discarded).

Both run ``--rounds`` times, alternating, and the medians are compared:
``report: X s, DuckDB alone: Y s, ratio Zx``.  The target is a ratio of at
most 1.5.  Inputs: the plain file, ``--gzip`` a gzip copy, ``--glob N`` the
log split into N gzip files read through one glob pattern.

    .venv/bin/python bench/bench_report.py [--lines N] [--gzip] [--glob N] [--rounds R] [--seed S] [--keep] [--floor]
        [--detected] [--operators]
    .venv/bin/python bench/bench_report.py --log FILE_OR_GLOB    # an existing (real) log
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import report  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
# parts renamed: main and split_gzip have a `parts` of their own
from report_queries import ALONE, ALONE_DETECTED, floor_sql, params  # noqa: E402
from report_queries import parts as statement_parts  # noqa: E402

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


def duckdb_alone(pattern: str, sql: str = ALONE) -> tuple[float, float, float]:
    """(wall, CPU, query wall) seconds of DuckDB alone running ``sql`` on the
    files in ``pattern`` (by default requests and TTFT p50/p95/p99 per arm).
    Wall and CPU run from the connection to its close, as the report's do (it
    opens and closes its own, and closing frees what the query used); the
    query's own wall time is kept beside them."""
    import duckdb

    t0, c0 = time.perf_counter(), time.process_time()
    con = duckdb.connect()
    q0 = time.perf_counter()
    con.execute(sql, {"f": pattern}).fetchall()
    query = time.perf_counter() - q0
    con.close()
    return time.perf_counter() - t0, time.process_time() - c0, query


def run_report(pattern: str) -> tuple[float, float, int]:
    """(wall, CPU) seconds of ``gateway report`` and its exit code."""
    out = io.StringIO()
    t0, c0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(out):
        rc = report.main([pattern])
    return time.perf_counter() - t0, time.process_time() - c0, rc


def compare(label: str, pattern: str, lines: int | None, rounds: int, with_floor: bool = False,
            with_detected: bool = False) -> bool:
    """Alternate baseline and report ``rounds`` times; print the medians of
    wall time (what the target is about) and of CPU time (all threads; it
    moves far less than wall time when other work shares the machine)."""
    # the floor: DuckDB reading just the fields the report checks, typed as
    # the report reads them (one count per field, no checks, no aggregates):
    # what any one-scan design over these fields pays
    floor = floor_sql("auto")
    base, took, floors, detected = [], [], [], []
    for _ in range(rounds):
        base.append(duckdb_alone(pattern))   # also warms the page cache
        if with_floor:
            floors.append(duckdb_alone(pattern, floor))
        if with_detected:
            detected.append(duckdb_alone(pattern, ALONE_DETECTED))
        wall, cpu, rc = run_report(pattern)
        if rc != 0:
            print(f"report exited with {rc}", file=sys.stderr)
            return False
        took.append((wall, cpu))
    bw, bc, bq = (statistics.median(x[i] for x in base) for i in (0, 1, 2))
    rw, rc_ = (statistics.median(x[i] for x in took) for i in (0, 1))
    speed = f"  ({lines / rw / 1e3:,.0f}k lines/s)" if lines else ""
    print(f"[{label}] report: {rw:.2f} s, DuckDB alone: {bw:.2f} s, ratio {rw / bw:.2f}x{speed}; "
          f"CPU {rc_:.2f} s vs {bc:.2f} s, ratio {rc_ / bc:.2f}x")
    # each round's ratio: a slow spell of the machine slows both of a round alike
    paired = statistics.median(t[0] / b[0] for t, b in zip(took, base))
    paired_cpu = statistics.median(t[1] / b[1] for t, b in zip(took, base))
    print(f"    median of the rounds' own ratios: wall {paired:.2f}x, CPU {paired_cpu:.2f}x")
    print(f"    DuckDB alone's query without its connection: {bq:.2f} s; the report against it: {rw / bq:.2f}x "
          f"(rounds' own: {statistics.median(t[0] / b[2] for t, b in zip(took, base)):.2f}x)")
    print(f"    wall per round: report {' '.join(f'{x[0]:.2f}' for x in took)}"
          f" / alone {' '.join(f'{x[0]:.2f}' for x in base)}")
    if floors:
        fw, fc = (statistics.median(x[i] for x in floors) for i in (0, 1))
        print(f"    floor (DuckDB reading the report's fields, nothing else): {fw:.2f} s, ratio {fw / bw:.2f}x; "
              f"CPU {fc:.2f} s, ratio {fc / bc:.2f}x")
    if detected:
        dw = statistics.median(x[0] for x in detected)
        print(f"    DuckDB alone with the schema detected (read_ndjson(file), as typed by hand; not the target's "
              f"baseline): {dw:.2f} s, {dw / bw:.2f}x the baseline; the report against it: {rw / dw:.2f}x")
    return True


def operators(path: str, rounds: int) -> None:
    """CPU seconds per DuckDB operator (DuckDB's own profiler, summed over
    threads; the median of ``rounds`` alternating runs) of DuckDB alone's
    query, the floor and the report's one-pass statement, each on a
    connection of its own set up as the report's: where the statement's
    time goes, operator by operator, on a plain file."""
    import json

    import duckdb

    statement = statement_parts()
    queries = {"DuckDB alone": ALONE, "floor": statement["floor"], "report's statement": statement["statement"]}
    given = params([path])
    seconds: dict[str, dict[str, list[float]]] = {name: {} for name in queries}
    with tempfile.TemporaryDirectory(prefix="bench-report-profile-") as tmp:
        out = os.path.join(tmp, "profile.json")
        for _ in range(rounds):
            for name, sql in queries.items():
                con = duckdb.connect()
                con.execute("SET TimeZone = 'UTC'")
                con.execute("SET preserve_insertion_order = false")
                con.execute("SET enable_profiling = 'json'")
                con.execute(f"SET profiling_output = '{out}'")
                con.execute(sql, {k: v for k, v in given.items() if f"${k}" in sql}).fetchnumpy()
                con.close()
                with open(out, "rb") as f:
                    tree = json.load(f)
                # top down; a name met again (a second PROJECTION) gets its rank
                met: dict[str, int] = {}
                nodes = list(tree["operator"])
                while nodes:
                    node = nodes.pop(0)
                    met[node["name"]] = rank = met.get(node["name"], 0) + 1
                    op = node["name"] + (f" #{rank}" if rank > 1 else "")
                    seconds[name].setdefault(op, []).append(node["timing"])
                    nodes.extend(node.get("children", []))
    base = sum(statistics.median(ts) for ts in seconds["DuckDB alone"].values())
    print(f"    DuckDB's profiler, CPU seconds per operator (median of {rounds}), x DuckDB alone's total:")
    for name, ops in seconds.items():
        total = sum(statistics.median(ts) for ts in ops.values())
        shown = ", ".join(f"{op} {statistics.median(ts):.3f} s ({statistics.median(ts) / base:.2f}x)"
                          for op, ts in sorted(ops.items(), key=lambda kv: -statistics.median(kv[1]))
                          if statistics.median(ts) >= 0.0005)
        print(f"      {name}: {total:.3f} s ({total / base:.2f}x): {shown}")


def split_gzip(path: str, parts: int, directory: str) -> str:
    """The log split into ``parts`` gzip files, as rotated logs of several
    instances; returns the glob pattern matching them."""
    with open(path, "rb") as src:
        lines = src.readlines()
    size = -(-len(lines) // parts)
    for i in range(parts):
        with gzip.open(os.path.join(directory, f"gw-{i % 4}.{i // 4:03d}.jsonl.gz"), "wb",
                       compresslevel=6) as dst:
            dst.writelines(lines[i * size:(i + 1) * size])
    return os.path.join(directory, "gw-*.jsonl.gz")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=1_000_000, help="log lines (default 1000000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per input (median)")
    p.add_argument("--gzip", action="store_true", help="also benchmark a gzip copy of the log")
    p.add_argument("--glob", type=int, metavar="N", default=0,
                   help="also benchmark the log split into N gzip files, read by one glob")
    p.add_argument("--floor", action="store_true",
                   help="also time DuckDB reading just the fields the report reads (the floor of one scan)")
    p.add_argument("--detected", action="store_true",
                   help="also time DuckDB alone with the schema detected, as typed by hand (shown beside, not judged)")
    p.add_argument("--operators", action="store_true",
                   help="also DuckDB's per-operator CPU time of DuckDB alone, the floor and the report's statement")
    p.add_argument("--keep", action="store_true", help="keep the generated file(s), print paths")
    p.add_argument("--log", metavar="FILE",
                   help="benchmark this existing log or glob (plain or gzip) instead of generating one")
    args = p.parse_args(argv)

    print(f"machine: {os.cpu_count()} CPUs, {_cpu_model()}")
    # Import the report's modules (DuckDB, SciPy) before timing: a one-off
    # per process, not a cost per line.
    t0 = time.perf_counter()
    import gateway.report.html
    import gateway.report.summary  # noqa: F401
    print(f"imports (duckdb, scipy, report modules): {time.perf_counter() - t0:.2f} s, not timed below")
    import duckdb

    t0 = time.perf_counter()
    duckdb.connect().close()
    print(f"a DuckDB connection: {(time.perf_counter() - t0) * 1000:.0f} ms, "
          "timed in both (each opens and closes its own)")
    if args.log:
        if not compare(args.log, args.log, None, args.rounds, args.floor, args.detected):
            return 1
        if args.operators:
            operators(args.log, args.rounds)
        return 0

    tmp = tempfile.mkdtemp(prefix="bench-report-")
    plain = os.path.join(tmp, "requests.log")
    t0 = time.perf_counter()
    write_log(plain, args.lines, args.seed)
    inputs = [("plain", plain)]
    if args.gzip:
        gz = plain + ".gz"
        with open(plain, "rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        inputs.append(("gzip", gz))
    if args.glob:
        parts = os.path.join(tmp, "parts")
        os.mkdir(parts)
        inputs.append((f"glob of {args.glob} gzip files", split_gzip(plain, args.glob, parts)))
    size = os.path.getsize(plain)
    print(f"generated {args.lines:,} lines ({size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s"
          f" -> {tmp}")
    try:
        for label, pattern in inputs:
            if not compare(label, pattern, args.lines, args.rounds, args.floor, args.detected):
                return 1
            if args.operators and label == "plain":
                operators(pattern, args.rounds)
    finally:
        if args.keep:
            print("kept:", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    raise SystemExit(main())
