"""Open-stream capacity: N concurrent idle streams held open by one gateway worker.

    python bench/bench_idle.py [-n 10000] [--loaders 4] [--heartbeat-s 2] [--idle-s 120] [--asyncio] [--json out.json]

One `gateway mock-upstream` and one `gateway serve` worker (a config whose only
provider is the mock, sized for the run: the provider's `max_connections`,
`server.max_connections` and `max_streams` at least N, `server.heartbeat_s`
and the provider's `timeouts.idle_s` short enough to be seen in a short run),
each a real process on a free loopback port, stopped by PID at the end.

Load generators (`--loaders` processes, aiohttp clients, each raising its own
open-file limit) open N streaming `POST /v1/chat/completions` together, at
most `--open-concurrency` connecting at once in all (the listen backlog is
128). The mock sends each stream's first token at once and then nothing for
longer than `idle_s` (`X-Mock-Inter-Token-Delay-Ms`), so every stream is open
and idle: the gateway writes a `: keep-alive` comment every `heartbeat_s`
and, `idle_s` after the first token, ends the stream with its `timeout_idle`
error event.

Figures:
  RSS per stream   the gateway's VmRSS with all N open (after their first token)
                   minus before any (after a warm-up), / N, in KiB; the same for
                   the mock and the loaders; the gateway's open fds (/proc/PID/fd)
                   and VmHWM; its CPU while the N streams sit idle.
  heartbeats       each client notes when each keep-alive arrives; lateness is the
                   gap since the previous write (the first token or the previous
                   keep-alive) minus heartbeat_s: the gateway schedules each one
                   heartbeat_s after the last. p50/p99/max over the heartbeats
                   that arrived while all N streams were open (and over all).
  timeouts         arrival of the timeout_idle event minus (first token + idle_s):
                   p50/p99/max.
  errors           a stream that did not open, did not get its first token, or
                   ended any other way than with timeout_idle (then end of body).

Monotonic clocks (CLOCK_MONOTONIC) are comparable across processes on Linux.
Caveat: the mock, the gateway and the load generators share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_edge import ROOT, cpu_seconds, fmt, machine, start, stop  # noqa: E402
from bench_edge import gateway_config as bench_edge_config  # noqa: E402

KEEP_ALIVE = b": keep-alive"


# --- the load generator (runs in its own process: `bench_idle.py --load JSON`) ---

async def _stream(session, spec: dict, gate: asyncio.Semaphore, opened: list[int]) -> dict:
    """One stream: when its first token came, each keep-alive, how and when it ended."""
    rec: dict = {"t0": None, "hb": [], "end": None, "error": None}
    await gate.acquire()
    held = True
    try:
        async with session.post(spec["url"], json=spec["body"], headers=spec["headers"]) as response:
            if response.status != 200:
                rec["error"] = f"status {response.status}: {(await response.text())[:200]}"
                return rec
            async for line in response.content:
                now = time.monotonic()
                if line.startswith(KEEP_ALIVE):
                    rec["hb"].append(now)
                elif not line.startswith(b"data:"):
                    continue
                elif b"timeout_idle" in line:
                    rec["end"] = now
                elif rec["t0"] is None and b'"content":"' in line and b'"content":""' not in line:
                    rec["t0"] = now
                    opened[0] += 1
                    gate.release()
                    held = False
                elif rec["t0"] is not None and rec["end"] is None and rec["error"] is None:
                    rec["error"] = "unexpected event: " + line[:200].decode(errors="replace")
            rec["eof"] = time.monotonic()
    except Exception as exc:  # counted as an error, with its kind
        rec["error"] = repr(exc)[:200]
    finally:
        if held:
            gate.release()
    if rec["error"] is None and (rec["t0"] is None or rec["end"] is None):
        rec["error"] = "no first token" if rec["t0"] is None else "ended without timeout_idle"
    return rec


async def _load(spec: dict) -> dict:
    import aiohttp

    opened = [0]
    gate = asyncio.Semaphore(spec["open_concurrency"])
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        rss_before = status_kib(os.getpid(), "VmRSS")  # imports done, no stream yet
        tasks = [asyncio.create_task(_stream(session, spec, gate, opened)) for _ in range(spec["streams"])]
        # Tell the parent once every stream has its first token or has failed.
        while True:
            failed = sum(1 for t in tasks if t.done() and t.result()["t0"] is None)
            if opened[0] + failed >= len(tasks):
                break
            await asyncio.sleep(0.05)
        print(f"open {opened[0]} {failed} {rss_before} {status_kib(os.getpid(), 'VmRSS')}", flush=True)
        records = await asyncio.gather(*tasks)
    return {"records": records}


def load_main(spec: dict) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        result = runner.run(_load(spec))
    Path(spec["out"]).write_text(json.dumps(result))


# --- readings of a process ---

def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def reading(pid: int) -> dict:
    return {"rss_kib": status_kib(pid, "VmRSS"), "hwm_kib": status_kib(pid, "VmHWM"), "fds": open_fds(pid),
            "cpu_s": cpu_seconds([pid])}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else math.nan


def spread(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": pct(values, 0.5) * 1000, "p99_ms": pct(values, 0.99) * 1000,
            "max_ms": max(values) * 1000 if values else math.nan, "min_ms": min(values) * 1000 if values else math.nan}


# --- the run ---

def gateway_config(tmp: Path, mock_url: str, args: argparse.Namespace) -> Path:
    room = args.n + 10  # the warm-up's connections may still be open
    return bench_edge_config(tmp, mock_url,
                             server={"heartbeat_s": args.heartbeat_s, "max_connections": room, "max_streams": room},
                             provider={"max_connections": args.n}, timeouts={"idle_s": args.idle_s})


def analyse(records: list[dict], args: argparse.Namespace, all_open: float, first_end: float) -> dict:
    lateness_all: list[float] = []
    lateness_window: list[float] = []
    timeout_late: list[float] = []
    errors: dict[str, int] = {}
    for rec in records:
        if rec["error"] is not None:
            kind = re.sub(r"\d+", "N", rec["error"])[:80]
            errors[kind] = errors.get(kind, 0) + 1
            continue
        previous = rec["t0"]
        for at in rec["hb"]:
            late = at - previous - args.heartbeat_s
            lateness_all.append(late)
            if all_open <= at <= first_end:
                lateness_window.append(late)
            previous = at
        timeout_late.append(rec["end"] - rec["t0"] - args.idle_s)
    return {"heartbeat_late_all_open": spread(lateness_window), "heartbeat_late_all": spread(lateness_all),
            "timeout_late": spread(timeout_late), "errors": sum(errors.values()), "error_kinds": errors,
            "ok": len(timeout_late)}


def table(r: dict) -> str:
    n = r["n"]
    g, m, ld = r["gateway"], r["mock"], r["loaders"]
    hb, hb_all, to = r["heartbeat_late_all_open"], r["heartbeat_late_all"], r["timeout_late"]
    rows = [
        "| figure | value |", "|---|---:|",
        f"| streams open at once (of {n}) | {r['max_open']} |",
        f"| open phase (connect to first token, all N) | {fmt(r['open_s'])} s |",
        f"| gateway RSS before / with N open / after | {g['before']['rss_kib'] / 1024:.1f} / "
        f"{g['open']['rss_kib'] / 1024:.1f} / {g['after']['rss_kib'] / 1024:.1f} MiB |",
        f"| **gateway RSS per open stream** | **{g['rss_per_stream_kib']:.1f} KiB** |",
        f"| gateway VmHWM with N open | {g['open']['hwm_kib'] / 1024:.1f} MiB |",
        f"| gateway open fds before / with N open / after | {g['before']['fds']} / {g['open']['fds']} / "
        f"{g['after']['fds']} ({(g['open']['fds'] - g['before']['fds']) / n:.2f} per stream) |",
        f"| gateway CPU with N idle streams (heartbeats) | {fmt(g['idle_cpu_percent'])} % of a core |",
        f"| mock RSS per open stream | {m['rss_per_stream_kib']:.1f} KiB |",
        f"| loaders' RSS per open stream | {ld['rss_per_stream_kib']:.1f} KiB |",
        f"| heartbeat lateness, all N open: p50 / p99 / max (n) | {fmt(hb['p50_ms'])} / {fmt(hb['p99_ms'])} / "
        f"{fmt(hb['max_ms'])} ms ({hb['n']}) |",
        f"| heartbeat lateness, whole run: p50 / p99 / max (n) | {fmt(hb_all['p50_ms'])} / "
        f"{fmt(hb_all['p99_ms'])} / {fmt(hb_all['max_ms'])} ms ({hb_all['n']}) |",
        f"| timeout_idle lateness: p50 / p99 / max (n) | {fmt(to['p50_ms'])} / {fmt(to['p99_ms'])} / "
        f"{fmt(to['max_ms'])} ms ({to['n']}) |",
        f"| errors | {r['errors']} |",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", type=int, default=10_000, help="streams held open at once (default 10,000)")
    parser.add_argument("--loaders", type=int, default=4, help="load generator processes (default 4)")
    parser.add_argument("--open-concurrency", type=int, default=128,
                        help="streams connecting at once, over all loaders (default 128: the listen backlog)")
    parser.add_argument("--heartbeat-s", type=float, default=2.0, help="the gateway's server.heartbeat_s")
    parser.add_argument("--idle-s", type=float, default=120.0, help="the provider's timeouts.idle_s: longer than "
                        "it takes to open all N streams (default 120)")
    parser.add_argument("--asyncio", action="store_true", help="run the gateway on asyncio's loop (GATEWAY_LOOP="
                        "asyncio); by default it picks uvloop where installed")
    parser.add_argument("--json", type=Path, help="where to write the figures (default: the run's temp directory)")
    parser.add_argument("--load", help=argparse.SUPPRESS)  # internal: run as a load generator
    args = parser.parse_args()
    if args.load:
        load_main(json.loads(args.load))
        return
    info = machine()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, load average {info['loadavg_start'][0]:.2f}",
          file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops every process started
    tmp = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    args.json = args.json or tmp / "bench-idle.json"

    # The gateway starts with this shell's limits, as a user would start it (its own startup line says what
    # it made of them). The mock and the loaders get room for N sockets each, where the OS allows.
    own = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(own[1], 2 * args.n + 4096)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (own[1], own[1]))
    info["bench_nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)
    info["shell_nofile"] = own

    procs: list[subprocess.Popen[bytes]] = []
    result: dict = {"n": args.n, "heartbeat_s": args.heartbeat_s, "idle_s": args.idle_s, "loaders": args.loaders}
    try:
        mock, mock_port = start([sys.executable, "-m", "gateway", "mock-upstream", "--port", "0"],
                                b"mock provider", tmp / "mock.err", "mock")
        procs.append(mock)
        mock_url = f"http://127.0.0.1:{mock_port}"
        config = gateway_config(tmp, mock_url, args)
        serve = ["serve", "--config", str(config)]
        env = dict(os.environ, GATEWAY_LOOP="asyncio") if args.asyncio else None
        gw = subprocess.Popen([sys.executable, "-m", "gateway", *serve], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=open(tmp / "gateway.err", "wb"), env=env,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, own))
        procs.append(gw)
        from bench_edge import wait_for
        port = int(wait_for(tmp / "gateway.err", re.compile(rb"gateway listening on http://127\.0\.0\.1:(\d+)"),
                            gw, "gateway").group(1))
        startup = [line for line in (tmp / "gateway.err").read_text().splitlines() if "open-file limit" in line]
        info["gateway_startup"] = startup[0] if startup else None
        print(f"gateway: {info['gateway_startup']}", file=sys.stderr)
        if match := re.search(r"at most (\d+) client connections", info["gateway_startup"] or ""):
            if int(match.group(1)) < args.n:
                print(f"warning: the gateway caps client connections at {match.group(1)}, below N = {args.n}",
                      file=sys.stderr)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        body = {"model": "chat", "messages": [{"role": "user", "content": "idle"}], "stream": True}
        silent_ms = (args.idle_s + 120) * 1000  # the upstream's second token never comes in time
        headers = {"X-Mock-Tokens": "2", "X-Mock-First-Token-Delay-Ms": "0",
                   "X-Mock-Inter-Token-Delay-Ms": str(silent_ms)}

        # Warm-up (imports, first connections), then the baseline: short streams through the gateway.
        warm = {**headers, "X-Mock-Inter-Token-Delay-Ms": "0"}
        asyncio.run(_warm_up(url, body, warm))
        time.sleep(1.0)
        pids = {"gateway": gw.pid, "mock": mock.pid}
        before = {name: reading(pid) for name, pid in pids.items()}

        per = [args.n // args.loaders + (1 if i < args.n % args.loaders else 0) for i in range(args.loaders)]
        gate = max(1, args.open_concurrency // args.loaders)
        began = time.monotonic()
        loaders = [subprocess.Popen([sys.executable, __file__, "--load", json.dumps(
            {"url": url, "body": body, "headers": headers, "streams": count, "open_concurrency": gate,
             "out": str(tmp / f"loader{i}.json")})], stdout=subprocess.PIPE, cwd=ROOT)
            for i, count in enumerate(per) if count]
        procs.extend(loaders)
        loader_before = failed_to_open = 0
        for proc in loaders:
            line = proc.stdout.readline().split()
            if not line or line[0] != b"open":
                raise SystemExit(f"a load generator failed: {proc.wait()}")
            failed_to_open += int(line[2])
            loader_before += int(line[3])
        all_open = time.monotonic()
        result["open_s"] = all_open - began
        print(f"{args.n - failed_to_open} streams open after {result['open_s']:.1f} s", file=sys.stderr)
        time.sleep(min(2.0, args.heartbeat_s))  # a heartbeat round at N open
        with_open = {name: reading(pid) for name, pid in pids.items()}
        loader_open = sum(status_kib(p.pid, "VmRSS") for p in loaders)
        # The gateway's CPU while the N streams sit idle: until the first timeout could fire.
        quiet_until = began + args.idle_s - 1.0
        hold = quiet_until - time.monotonic()
        if hold > 1.0:
            cpu0, t0 = cpu_seconds([gw.pid]), time.monotonic()
            time.sleep(hold)
            idle_cpu = (cpu_seconds([gw.pid]) - cpu0) / (time.monotonic() - t0) * 100
        else:
            idle_cpu = math.nan
            print("warning: opening took longer than idle_s: not every stream was open at once", file=sys.stderr)
        for proc in loaders:
            if proc.wait() != 0:
                raise SystemExit(f"a load generator failed: {proc.returncode}")
        outs = [json.loads((tmp / f"loader{i}.json").read_text()) for i in range(len(loaders))]
        for name, proc in (("mock", mock), ("gateway", gw)):
            if proc.poll() is not None:  # then the streams' errors are its doing, not the gateway's
                result[f"{name}_exited"] = proc.returncode
                print(f"warning: the {name} exited ({proc.returncode}) during the run", file=sys.stderr)
        records = [rec for out in outs for rec in out["records"]]
        ended = time.monotonic()
        time.sleep(1.0)
        after = {name: reading(pid) for name, pid in pids.items()}
        first_end = min((r["end"] for r in records if r["end"] is not None), default=ended)
        events = sorted([(r["t0"], 1) for r in records if r["t0"] is not None]
                        + [(r.get("eof") or r["end"] or ended, -1) for r in records if r["t0"] is not None])
        level = result["max_open"] = 0
        for _, step in events:
            level += step
            result["max_open"] = max(result["max_open"], level)
        result.update(analyse(records, args, all_open, first_end))
        opened = args.n - failed_to_open
        for name in pids:
            result[name] = {"before": before[name], "open": with_open[name], "after": after[name],
                            "rss_per_stream_kib": (with_open[name]["rss_kib"] - before[name]["rss_kib"]) / opened}
        result["gateway"]["idle_cpu_percent"] = idle_cpu
        result["loaders"] = {"rss_before_kib": loader_before, "rss_open_kib": loader_open,
                             "rss_per_stream_kib": (loader_open - loader_before) / opened}
        info["loadavg_end"] = os.getloadavg()
    finally:
        for proc in reversed(procs):
            stop(proc)
    command = "python bench/bench_idle.py " + " ".join(sys.argv[1:])
    args.json.write_text(json.dumps({"command": command, "machine": info, "result": result}, indent=1))
    print(f"\n{command}\nmachine: {info['nproc']} CPUs, {info['cpu']}; load average {info['loadavg_start'][0]:.2f} "
          f"at start, {info['loadavg_end'][0]:.2f} at end\ngateway: {info['gateway_startup']}\n"
          f"N = {args.n}, heartbeat_s {args.heartbeat_s:g}, idle_s {args.idle_s:g}, {args.loaders} loaders\n")
    print(table(result))
    if result["error_kinds"]:
        print("\nerrors by kind: " + json.dumps(result["error_kinds"]))
    print(f"\nJSON: {args.json}")


async def _warm_up(url: str, body: dict, headers: dict) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async def one() -> None:
            async with session.post(url, json=body, headers=headers) as response:
                await response.read()
        for _ in range(5):
            await asyncio.gather(*(one() for _ in range(10)))


if __name__ == "__main__":
    main()
