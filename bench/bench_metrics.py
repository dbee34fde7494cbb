"""What one request's metrics cost the event loop: `Metrics.observe`, one process vs multiprocess mode.

    python bench/bench_metrics.py              # 20,000 observations, best of 5, each mode in a fresh process

One process keeps values in memory; `--workers N` runs prometheus_client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR), where each value is a slot in an
mmap'd file per process. Same record, same labels; the baseline is the
one-process mode, measured in the same run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(observations: int) -> float:
    sys.path.insert(0, str(ROOT))
    from gateway.metrics import Metrics
    from gateway.record import RequestRecord

    metrics = Metrics(["chat"])
    record = RequestRecord("r", "chat_completions")
    record.route, record.arm, record.provider = "chat", "only", "mock"
    record.finished({})
    record.ttft_ms, record.latency_ms, record.prompt_tokens, record.completion_tokens = 120.0, 900.0, 10, 20
    record.cost_usd = 0.001
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(observations):
            metrics.observe(record)
        best = min(best, (time.perf_counter() - started) / observations)
    return best * 1e6


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--measure":
        print(measure(int(sys.argv[2])))
        return
    observations = 20_000
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        for mode, extra in (("one process", {}), ("multiprocess", {"PROMETHEUS_MULTIPROC_DIR": directory})):
            env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"} | extra
            out = subprocess.run([sys.executable, __file__, "--measure", str(observations)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            results[mode] = float(out)
    base = results["one process"]
    print(f"{observations} observations per round, best of 5")
    for mode, us in results.items():
        print(f"{mode:13} {us:6.1f} us per request  {us / base:.2f}x")


if __name__ == "__main__":
    main()
