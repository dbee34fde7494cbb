"""Instructions per stream: a relay under valgrind's callgrind, which counts instructions, not seconds.

    python bench/bench_instructions.py                       # bare relay and gateway, 200 streams x 20 tokens
    python bench/bench_instructions.py --tokens 200 --streams 100
    python bench/bench_instructions.py --targets gateway --checkout ../old-main   # another checkout's gateway
    GATEWAY_LOOP=asyncio python bench/bench_instructions.py --targets gateway    # the gateway on asyncio's loop

On a shared machine, CPU time moves by 20-30% between runs; an instruction
count moves by well under 1% (hash seeds fixed). So the effect of one change
on the relay's work is read here, and the edge comparison (bench_edge.py)
says what it means in streams/s and milliseconds.

Each target runs under `valgrind --tool=callgrind` in front of one built-in
mock (not under valgrind). After a warm-up of 20 streams the counters are
zeroed (`callgrind_control -z`), the streams run (10 at a time), the counters
are dumped: the instructions of the relay process (every thread) for exactly
those streams. Needs valgrind (Debian: `apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_edge  # noqa: E402  (the load generator and process helpers)


def run_streams(url: str, body: dict, streams: int, tokens: int, concurrency: int = 10,
                on_ready: Callable[[], object] | None = None) -> None:
    load = {"tokens": tokens, "delay_ms": 0, "concurrency": concurrency}
    cell = bench_edge.run_cell(url, body, load, streams, 1, [], on_ready=on_ready)
    if cell["errors"]:
        raise SystemExit(f"{cell['errors']} streams failed against {url}")


def instructions(argv: list[str], cwd: Path, ready: bytes, path: str, body: dict, streams: int, tokens: int,
                 tmp: Path, name: str) -> int:
    out = tmp / f"{name}.callgrind"
    log = tmp / f"{name}.err"
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=env)
    try:
        deadline = time.monotonic() + 300  # imports under valgrind take a while
        while not (m := re.search(re.escape(ready) + rb".*?http://127\.0\.0\.1:(\d+)", log.read_bytes())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)
        url = f"http://127.0.0.1:{int(m.group(1))}{path}"
        run_streams(url, body, 20, tokens, concurrency=5)  # warm-up: imports, pools, caches
        # Zeroed once the loader's connections are open: only the measured streams are counted.
        run_streams(url, body, streams, tokens, on_ready=lambda: subprocess.run(
            ["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True))
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        dumps = sorted(tmp.glob(f"{name}.callgrind.*"))
        if not dumps:
            raise SystemExit(f"no callgrind dump for {name}")
        return int(re.search(rb"^summary: (\d+)", dumps[-1].read_bytes(), re.M).group(1))
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--targets", default="bare,gateway", help="comma-separated: bare, gateway")
    parser.add_argument("--checkout", type=Path, default=HERE.parent,
                        help="the checkout whose gateway runs (default: this one)")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    mock, mock_port = bench_edge.start([sys.executable, "-m", "gateway", "mock-upstream", "--port", "0"],
                                       b"mock provider", tmp / "mock.err", "mock")
    try:
        mock_url = f"http://127.0.0.1:{mock_port}"
        config = bench_edge.gateway_config(tmp, mock_url)
        messages = [{"role": "user", "content": "benchmark"}]
        runs = {
            "bare": ([sys.executable, str(HERE / "bare_relay.py"), "--upstream", mock_url], HERE.parent,
                     b"bare relay listening", bench_edge.MOCK_PATH,
                     {"model": "m", "messages": messages, "stream": True}),
            "gateway": ([sys.executable, "-m", "gateway", "serve", "--config", str(config)], args.checkout.resolve(),
                        b"gateway listening", "/v1/chat/completions",
                        {"model": "chat", "messages": messages, "stream": True}),
        }
        results = {}
        for name in filter(None, args.targets.split(",")):
            argv, cwd, ready, path, body = runs[name]
            results[name] = instructions(argv, cwd, ready, path, body, args.streams, args.tokens, tmp, name)
        print(f"{args.streams} streams x {args.tokens} tokens, 10 at a time; checkout {args.checkout.resolve()}; "
              f"loop {os.environ.get('GATEWAY_LOOP') or 'default'}")
        base = results.get("bare")
        for name, count in results.items():
            ratio = f"  {count / base:.2f}x bare" if base else ""
            print(f"{name:8} {count / args.streams / 1e6:6.3f} M instructions per stream{ratio}")
    finally:
        bench_edge.stop(mock)


if __name__ == "__main__":
    main()
