"""The canary guard's figures on seeded simulated streams (the statistics of gateway/guard.py, in-process).

    python bench/bench_guard.py [--runs 20] [--confidence 0.95] [--canary-share 0.1]

The same simulation as tests/test_guard.py: per request, the arm by its share,
an error at the arm's rate, else a lognormal TTFT (sigma 0.5) around the
arm's median. Prints the A/A false-trip rate over runs of 5,000 requests and
the median (and max) number of the route's requests until the guard trips a
canary with 5x the control's errors (5% vs 1%), twice its TTFT, and a better one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.test_guard import simulate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--canary-share", type=float, default=0.1)
    args = parser.parse_args()
    cases = {
        "A/A (5,000 requests)": (5000, {}),
        "5x errors (5% vs 1%)": (100_000, {"canary_errors": 0.05}),
        "2x TTFT": (100_000, {"canary_ttft": 400.0}),
        "better canary (5,000 requests)": (5000, {"control_errors": 0.05, "control_ttft": 400.0}),
    }
    print(f"{args.runs} seeded runs each, canary share {args.canary_share:.0%}, confidence {args.confidence}")
    print("| case | runs tripped | median requests to trip | max |")
    print("|---|---|---|---|")
    for name, (requests, knobs) in cases.items():
        trips = [simulate(seed, requests, canary_share=args.canary_share, confidence=args.confidence, **knobs)
                 for seed in range(args.runs)]
        hit = [t for t in trips if t is not None]
        median = f"{statistics.median(hit):.0f}" if hit else "-"
        print(f"| {name} | {len(hit)}/{args.runs} | {median} | {max(hit) if hit else '-'} |")


if __name__ == "__main__":
    main()
