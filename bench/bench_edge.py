"""What each relay adds at the edge, on the same load in one run.

    python bench/bench_edge.py [--quick] [--skip c1000,realistic] [--loaders N] [--json out.json]

Targets, each a real process on loopback in front of one built-in mock
(`gateway mock-upstream`):

  direct      the client reads the mock's stream itself
  nginx       nginx (`proxy_buffering off`, upstream keep-alive) in front of the mock: what a C relay adds
  bare        bench/bare_relay.py, a bare aiohttp byte relay: the floor of this runtime
  gateway     `gateway serve`, one process, a config whose only provider is the mock
  gateway-w2  the same with `--workers 2`

The load generator runs in separate processes (`--loaders`, default 1) so it
never shares a relay's event loop: aiohttp clients streaming `POST
/v1/chat/completions` with `stream: true`, `concurrency` streams in flight,
a fixed number of streams per cell. Loads: 20-token streams at 0 ms and 5 ms
between tokens, and 500-token streams at 20 ms ("realistic" chat), each at
concurrency 1, 50, 200 and 1,000 (`--skip c1000,realistic` leaves some out).
For every load the targets run one after the other, so they see the same
machine.

Figures per (target, load): TTFT p50/p99, TTFT added vs direct (p50), total
stream time p99, streams/s, the relay's CPU ms per stream and us per event
(utime+stime from /proc/PID/stat of the relay and its child processes, before
and after the cell) and its RSS after the cell (VmRSS, summed over
processes). Ratios against bare and direct of the same run. Writes a markdown
table to stdout and everything to a JSON file.

Caveat: the mock, the relay and the load generator share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MOCK_PATH = "/oa/v1/chat/completions"
TARGETS = ("direct", "nginx", "bare", "gateway", "gateway-w2")


# --- the load generator (runs in its own process: `bench_edge.py --load JSON`) ---

async def _one_stream(session, url: str, body: dict, headers: dict) -> tuple[float, float, int]:
    started = time.perf_counter()
    ttft = math.nan
    events = 0
    async with session.post(url, json=body, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status} {await response.text()}")
        async for line in response.content:
            if line.startswith(b"data:"):
                events += 1
                if math.isnan(ttft) and b'"content":"' in line and b'"content":""' not in line:
                    ttft = time.perf_counter() - started
    return ttft, time.perf_counter() - started, events


async def _load(spec: dict) -> dict:
    import aiohttp

    headers = {"X-Mock-Tokens": str(spec["tokens"]), "X-Mock-First-Token-Delay-Ms": "0",
               "X-Mock-Inter-Token-Delay-Ms": str(spec["delay_ms"])}
    gate = asyncio.Semaphore(spec["concurrency"])
    ttfts: list[float] = []
    totals: list[float] = []
    events = errors = 0

    async def bounded(session) -> None:
        nonlocal events, errors
        async with gate:
            try:
                ttft, total, n = await _one_stream(session, spec["url"], spec["body"], headers)
            except Exception as exc:  # counted, and the first few shown
                errors += 1
                if errors <= 3:
                    print(f"stream failed: {exc!r}"[:300], file=sys.stderr)
                return
            ttfts.append(ttft)
            totals.append(total)
            events += n

    connector = aiohttp.TCPConnector(limit=spec["concurrency"], force_close=False)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Unmeasured: open this loader's connections, and the relay's upstream ones, at this concurrency. Both
        # the mock and aiohttp listen with a backlog of 128: hundreds of connects at once lose SYNs and wait 1 s
        # for the retransmit, which would measure the listen queue, not the relay.
        warm = {**headers, "X-Mock-Tokens": "2", "X-Mock-Inter-Token-Delay-Ms": "0"}
        await asyncio.gather(*(_one_stream(session, spec["url"], spec["body"], warm)
                               for _ in range(spec["concurrency"])), return_exceptions=True)
        print("ready", flush=True)
        sys.stdin.readline()  # the parent reads the relay's CPU time, then says go
        started, cpu = time.time(), time.process_time()
        await asyncio.gather(*(bounded(session) for _ in range(spec["streams"])))
        ended, cpu = time.time(), time.process_time() - cpu
    return {"ttfts": ttfts, "totals": totals, "events": events, "errors": errors, "started": started, "ended": ended,
            "cpu_s": cpu}


# --- processes ---

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(log: Path, pattern: re.Pattern[bytes], proc: subprocess.Popen[bytes], what: str) -> re.Match[bytes]:
    for _ in range(400):
        if match := pattern.search(log.read_bytes()):
            return match
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop(proc)
    raise SystemExit(f"{what} did not start: {log.read_text(errors='replace')}")


def start(argv: list[str], ready: bytes, log: Path, what: str) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    match = wait_for(log, re.compile(re.escape(ready) + rb" on http://127\.0\.0\.1:(\d+)"), proc, what)
    return proc, int(match.group(1))


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    stop(proc)
    raise SystemExit(f"{what} did not listen on {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def nginx_conf(prefix: Path, port: int, upstream: str) -> str:
    """A minimal nginx in `prefix`: the template's streaming settings, nothing else."""
    user = "user root root;" if os.geteuid() == 0 else ""
    temp = "".join(f"    {kind}_temp_path {prefix / kind};\n" for kind in ("client_body", "proxy", "fastcgi",
                                                                            "uwsgi", "scgi"))
    return textwrap.dedent(f"""\
        {user}
        daemon off;
        worker_processes 1;
        pid {prefix / "nginx.pid"};
        error_log {prefix / "error.log"} warn;
        worker_rlimit_nofile 8192;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
        {temp}
            upstream mock {{ server {upstream}; keepalive 1024; }}
            server {{
                listen 127.0.0.1:{port} backlog=2048;
                location / {{
                    proxy_pass http://mock;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_buffering off;
                    proxy_cache off;
                    gzip off;
                    proxy_read_timeout 600s;
                }}
            }}
        }}
        """)


def gateway_config(tmp: Path, mock_url: str, *, server: dict | None = None, provider: dict | None = None,
                   timeouts: dict | None = None) -> Path:
    """A gateway config in `tmp` whose only provider is the mock, on route `chat`, logging to `tmp`;
    `server`, `provider` and `timeouts` add settings to [server], [providers.mock] and its timeouts."""
    def lines(settings: dict | None) -> str:
        return "\n".join(f"{key} = {value}" for key, value in (settings or {}).items())

    config = tmp / "gateway.toml"
    config.write_text(f"""
[server]
host = "127.0.0.1"
port = 0
{lines(server)}
[log]
path = "{tmp / 'requests.log'}"
[providers.mock]
dialect = "openai"
base_url = "{mock_url}/oa/v1"
forward_headers = ["x-mock-"]
{lines(provider)}
[providers.mock.timeouts]
{lines(timeouts)}
[routes.chat]
arms = [{{ name = "only", provider = "mock", model = "m", weight = 100 }}]
""")
    return config


def pids_of(root: int) -> list[int]:
    """`root` and its descendants (the workers of --workers 2, nginx's workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLOCK_TICKS


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


# --- the run ---

def run_cell(url: str, body: dict, load: dict, streams: int, loaders: int, pids: list[int],
             mock_pid: int | None = None, on_ready: Callable[[], object] | None = None) -> dict:
    """`streams` streams of `load` from `loaders` processes; `on_ready` runs once their connections
    are open, right before the measured part (bench_instructions.py zeroes its counters there)."""
    per = [streams // loaders + (1 if i < streams % loaders else 0) for i in range(loaders)]
    conc = [max(1, load["concurrency"] // loaders + (1 if i < load["concurrency"] % loaders else 0))
            for i in range(loaders)]
    procs = [subprocess.Popen([sys.executable, __file__, "--load", json.dumps(
        {"url": url, "body": body, "tokens": load["tokens"], "delay_ms": load["delay_ms"],
         "concurrency": conc[i], "streams": per[i]})], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
             for i in range(loaders) if per[i]]
    for proc in procs:  # each has warmed up its connections
        if proc.stdout.readline().strip() != b"ready":
            raise SystemExit(f"a load generator failed: {proc.wait()}")
    if on_ready is not None:
        on_ready()
    cpu_before = cpu_seconds(pids) if pids else 0.0
    mock_before = cpu_seconds([mock_pid]) if mock_pid else 0.0
    for proc in procs:
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    outs = [json.loads(p.communicate()[0]) for p in procs]
    cpu = cpu_seconds(pids) - cpu_before if pids else math.nan
    mock_cpu = cpu_seconds([mock_pid]) - mock_before if mock_pid else math.nan
    ttfts = sorted(t for o in outs for t in o["ttfts"] if not math.isnan(t))
    totals = sorted(t for o in outs for t in o["totals"])
    done = len(totals)
    events = sum(o["events"] for o in outs)
    wall = max(o["ended"] for o in outs) - min(o["started"] for o in outs)
    loader_cpu = sum(o["cpu_s"] for o in outs)

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else math.nan

    return {"streams": done, "errors": sum(o["errors"] for o in outs), "events": events,
            "ttft_p50_ms": pct(ttfts, 0.5), "ttft_p99_ms": pct(ttfts, 0.99), "total_p99_ms": pct(totals, 0.99),
            "total_p50_ms": pct(totals, 0.5), "streams_per_s": done / wall if wall > 0 else math.nan,
            "cpu_ms_per_stream": cpu / done * 1000 if done and pids else math.nan,
            "cpu_us_per_event": cpu / events * 1e6 if events and pids else math.nan,
            "rss_mb": rss_mb(pids) if pids else math.nan,
            "mock_cpu_ms_per_stream": mock_cpu / done * 1000 if done and mock_pid else math.nan,
            "loader_cpu_ms_per_stream": loader_cpu / done * 1000 if done else math.nan,
            # Cores busy with this cell's processes (relay, mock, load generators): near `nproc`, the
            # machine, not the relay, is what limits streams/s.
            "busy_cores": (loader_cpu + (cpu if pids else 0) + (mock_cpu if mock_pid else 0)) / wall
            if wall > 0 else math.nan}


def median_cell(cells: list[dict]) -> dict:
    """Per figure, the median over rounds (errors and streams: summed)."""
    out = {}
    for key in cells[0]:
        values = [c[key] for c in cells]
        if key in ("errors", "streams", "events"):
            out[key] = sum(values)
        else:
            finite = [v for v in values if not math.isnan(v)]
            out[key] = statistics.median(finite) if finite else math.nan
    out["rounds"] = len(cells)
    return out


def loads_for(args: argparse.Namespace) -> list[dict]:
    concurrencies = [1, 50, 200] + ([] if "c1000" in args.skip else [1000])
    loads = [{"tokens": 20, "delay_ms": d, "concurrency": c} for d in (0, 5) for c in concurrencies]
    if "realistic" not in args.skip:
        loads += [{"tokens": 500, "delay_ms": 20, "concurrency": c} for c in concurrencies]
    for load in loads:
        load["name"] = f"c{load['concurrency']} {load['tokens']}tok@{load['delay_ms']}ms"
    return loads


def streams_for(load: dict, quick: bool) -> int:
    c, paced = load["concurrency"], load["delay_ms"] > 0
    if load["tokens"] >= 500:  # 10 s a stream, 500 events: one per slot is a steady reading
        return c
    if c == 1:  # the CPU clock ticks every 10 ms: enough streams that a cell takes >= 1 s
        return (20 if paced else 150) * (1 if quick else 2)
    return c * (3 if quick or c >= 1000 else 5)


def fmt(value: float, spec: str = ".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def ratio(value: float) -> str:
    return fmt(value, ".2f") + ("x" if not math.isnan(value) else "")


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "cpu": model, "loadavg_start": os.getloadavg(),
            "python": platform.python_version()}


def table(results: list[dict]) -> str:
    rows = ["| load | target | TTFT p50 ms | TTFT p99 ms | +TTFT vs direct ms | total p99 ms | streams/s "
            "| vs bare | vs direct | CPU ms/stream | CPU vs bare | CPU us/event | RSS MB | mock CPU ms/stream "
            "| busy cores | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rows.append(f"| {r['load']} | {r['target']} | {fmt(r['ttft_p50_ms'], '.2f')} | {fmt(r['ttft_p99_ms'], '.2f')} "
                    f"| {fmt(r['ttft_added_ms'], '+.2f')} | {fmt(r['total_p99_ms'])} | {fmt(r['streams_per_s'])} "
                    f"| {ratio(r['rate_vs_bare'])} | {ratio(r['rate_vs_direct'])} "
                    f"| {fmt(r['cpu_ms_per_stream'], '.2f')} | {ratio(r['cpu_vs_bare'])} "
                    f"| {fmt(r['cpu_us_per_event'], '.0f')} | {fmt(r['rss_mb'], '.0f')} "
                    f"| {fmt(r['mock_cpu_ms_per_stream'], '.2f')} | {fmt(r['busy_cores'], '.2f')} | {r['errors']} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run (fewer streams per cell)")
    parser.add_argument("--skip", type=lambda text: set(filter(None, text.split(","))), default=set(),
                        help="loads to leave out: c1000 (concurrency 1,000), realistic (500 tokens at 20 ms)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per cell, median reported "
                        "(default 2, --quick 1; 500-token cells run once)")
    parser.add_argument("--pool", type=int, help="the gateway provider's max_connections (default: the largest "
                        "concurrency of the run; the gateway's own default is 100)")
    parser.add_argument("--loaders", type=int, default=1, help="load generator processes (default 1)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of " + ",".join(TARGETS))
    parser.add_argument("--json", type=Path, help="where to write the figures (default: the run's temp directory)")
    parser.add_argument("--load", help=argparse.SUPPRESS)  # internal: run as a load generator
    args = parser.parse_args()
    if args.load:
        print(json.dumps(asyncio.run(_load(json.loads(args.load)))))
        return
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    targets = [t for t in args.targets.split(",") if t]
    assert all(t in TARGETS for t in targets) and "direct" in targets, "targets must include direct"
    assert args.skip <= {"c1000", "realistic"}, "--skip takes c1000 and realistic"
    info = machine()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, load average {info['loadavg_start'][0]:.2f}",
          file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops every process started
    tmp = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    args.json = args.json or tmp / "bench-edge.json"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # concurrency 1,000: thousands of sockets in the mock
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every process started here
    procs: list[subprocess.Popen[bytes]] = []
    try:
        mock, mock_port = start([sys.executable, "-m", "gateway", "mock-upstream", "--port", "0"],
                                b"mock provider", tmp / "mock.err", "mock")
        procs.append(mock)
        mock_url = f"http://127.0.0.1:{mock_port}"
        messages = [{"role": "user", "content": "benchmark"}]
        mock_body = {"model": "m", "messages": messages, "stream": True}
        endpoints: dict[str, tuple[str, dict, subprocess.Popen[bytes] | None]] = {
            "direct": (mock_url + MOCK_PATH, mock_body, None)}
        if "nginx" in targets:
            prefix = tmp / "nginx"
            prefix.mkdir()
            port = free_port()
            (prefix / "nginx.conf").write_text(nginx_conf(prefix, port, f"127.0.0.1:{mock_port}"))
            nginx = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                      "-e", str(prefix / "error.log")], stdout=subprocess.DEVNULL,
                                     stderr=open(tmp / "nginx.err", "wb"))
            procs.append(nginx)
            wait_port(port, nginx, "nginx")
            endpoints["nginx"] = (f"http://127.0.0.1:{port}{MOCK_PATH}", mock_body, nginx)
        if "bare" in targets:
            bare, port = start([sys.executable, str(HERE / "bare_relay.py"), "--upstream", mock_url],
                               b"bare relay listening", tmp / "bare.err", "bare relay")
            procs.append(bare)
            endpoints["bare"] = (f"http://127.0.0.1:{port}{MOCK_PATH}", mock_body, bare)
        # The provider's pool (per worker): by default sized to the largest concurrency, as the other relays
        # are unbounded; the gateway's own default (100) queues streams beyond it (`--pool 100` measures that).
        pool = args.pool or max(load["concurrency"] for load in loads_for(args))
        info["gateway_provider_max_connections"] = pool
        config = gateway_config(tmp, mock_url, provider={"max_connections": pool})
        gw_body = {"model": "chat", "messages": messages, "stream": True}
        for name, extra in (("gateway", []), ("gateway-w2", ["--workers", "2"])):
            if name in targets:
                gw, port = start([sys.executable, "-m", "gateway", "serve", "--config", str(config), *extra],
                                 b"gateway listening", tmp / f"{name}.err", name)
                procs.append(gw)
                endpoints[name] = (f"http://127.0.0.1:{port}/v1/chat/completions", gw_body, gw)
        pids = {name: pids_of(p.pid) if p else [] for name, (_, _, p) in endpoints.items()}
        for url, body, _ in endpoints.values():  # warm up: imports, first connections
            run_cell(url, body, {"tokens": 20, "delay_ms": 0, "concurrency": 10}, 40, 1, [])
        results = []
        started = time.monotonic()
        for index, load in enumerate(loads_for(args)):
            streams = streams_for(load, args.quick)
            rounds: dict[str, list[dict]] = {name: [] for name in targets}
            for r in range(1 if load["tokens"] >= 500 else args.rounds):
                shift = (index + r) % len(targets)
                for name in targets[shift:] + targets[:shift]:  # rotate the order between loads and rounds
                    url, body, _ = endpoints[name]
                    rounds[name].append(run_cell(url, body, load, streams, args.loaders, pids[name], mock.pid))
            cells = {name: median_cell(rounds[name]) for name in targets}
            for name in targets:
                cells[name].update(target=name, load=load["name"], **{k: load[k] for k in
                                                                      ("tokens", "delay_ms", "concurrency")})
            for name in targets:
                cell = cells[name]
                cell["ttft_added_ms"] = cell["ttft_p50_ms"] - cells["direct"]["ttft_p50_ms"]
                cell["rate_vs_direct"] = cell["streams_per_s"] / cells["direct"]["streams_per_s"]
                cell["rate_vs_bare"] = cell["streams_per_s"] / cells["bare"]["streams_per_s"] if "bare" in cells \
                    else math.nan
                cell["cpu_vs_bare"] = cell["cpu_ms_per_stream"] / cells["bare"]["cpu_ms_per_stream"] \
                    if "bare" in cells else math.nan
                results.append(cell)
                print(f"{load['name']:<18} {name:<11} TTFT p50 {fmt(cell['ttft_p50_ms'], '7.2f')} ms  "
                      f"{fmt(cell['streams_per_s'], '7.1f')} streams/s  CPU {fmt(cell['cpu_ms_per_stream'], '.2f')} "
                      f"ms/stream  errors {cell['errors']}", file=sys.stderr, flush=True)
        info["loadavg_end"] = os.getloadavg()
        info["seconds"] = round(time.monotonic() - started, 1)
    finally:
        for proc in reversed(procs):
            stop(proc)
    command = "python bench/bench_edge.py " + " ".join(sys.argv[1:])
    args.json.write_text(json.dumps({"command": command, "machine": info, "results": results}, indent=1))
    print(f"\n{command}\nmachine: {info['nproc']} CPUs, {info['cpu']}; load average {info['loadavg_start'][0]:.2f} "
          f"at start, {info['loadavg_end'][0]:.2f} at end; {info['seconds']} s of load; gateway provider pool "
          f"{info['gateway_provider_max_connections']} per worker\n")
    print(table(results))
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
