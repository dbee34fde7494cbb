"""How long one request's log line holds the event loop, by sink.

    python bench/bench_logging.py [--lines 20000]

Baseline (measured in the same run): structlog + orjson writing straight to
a file from the calling thread, the usual setup. Ours: the same rendering,
handed to the writer thread (gateway.record.RequestLog). Then ours again with
a stuck sink: a pipe nobody reads, where a direct write would block the loop
for as long as the reader stays away (forever, here).

Reported: median and p99 microseconds per emit on the calling thread, and the
ratio of each to the baseline's median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config import Price  # noqa: E402
from gateway.providers import Completion, Usage  # noqa: E402
from gateway.record import RequestLog, RequestRecord  # noqa: E402


def sample_record() -> RequestRecord:
    r = RequestRecord("5f0c2a7e9b1d4c3f8a6e0d2b4c6a8e0f", "chat_completions", route="chat", arm="canary",
                      provider="mock-canary", upstream_model="mock-claude", user_key_hash="9a1b2c3d4e5f6071",
                      user_key_source="user", stream=True, status=200, attempts=1)
    r.content_times.extend([1.0, 1.02, 1.05])
    r.served_by(Completion(b"{}", "", Usage(12, 20)))
    r.finished({"mock-claude": Price(3.0, 15.0)})
    return r


def timed(emit, record: RequestRecord, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        t = time.perf_counter()
        emit(record)
        out.append((time.perf_counter() - t) * 1e6)
    return out


def summary(name: str, us: list[float], base: float) -> str:
    us = sorted(us)
    median, p99 = statistics.median(us), us[int(0.99 * (len(us) - 1))]
    return f"{name:<34} median {median:7.2f} us  p99 {p99:8.2f} us  ratio {median / base:5.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=20_000)
    n = parser.parse_args().lines
    record = sample_record()
    tmp = Path(tempfile.mkdtemp())

    with open(tmp / "direct.log", "wb") as f:
        structlog.configure(processors=[structlog.processors.JSONRenderer(serializer=orjson.dumps)],
                            logger_factory=structlog.BytesLoggerFactory(f), cache_logger_on_first_use=False)
        direct = structlog.get_logger()
        baseline = timed(lambda r: direct.info("request", **r.fields()), record, n)
    base = statistics.median(baseline)

    log = RequestLog(str(tmp / "queued.log"))
    queued = timed(log.emit, record, n)
    log.close()

    fifo = tmp / "stuck.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # never read while measuring
    stuck_log = RequestLog(str(fifo))
    stuck = timed(stuck_log.emit, record, n)  # the pipe fills after ~70 lines; the loop never notices
    os.set_blocking(reader, True)
    drained = 0
    while drained < n:
        drained += os.read(reader, 1 << 20).count(b"\n")
    stuck_log.close()
    os.close(reader)

    print(f"{n} log lines of {len(orjson.dumps(record.fields()))} bytes")
    print(summary("baseline: direct write to a file", baseline, base))
    print(summary("ours: writer thread, file", queued, base))
    print(summary("ours: writer thread, stuck pipe", stuck, base))
    print("direct write, stuck pipe: blocks the event loop until a reader drains the pipe")


if __name__ == "__main__":
    main()
