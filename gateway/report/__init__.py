"""``gateway report`` -- the A/B (canary) report over request logs.

Reads request logs (docs/log-schema.md), one JSON object per line, plain or
gzip (detected by magic bytes), from files, glob patterns of rotated files
(``'logs/*.jsonl.gz'``) or stdin, with DuckDB, and compares the arms of a
route: time to first token, latency, error rate and cost.  DuckDB spills to a
private temp directory when a log does not fit in memory.

Usage::

    gateway report LOGFILE_OR_GLOB... [--since TIME] [--route NAME] [--control ARM]
                   [--format text|json] [--html FILE]

Needs the ``report`` extra (DuckDB, SciPy, matplotlib):
``pip install 'llm-gateway[report]'``; without it the command says so in one
line and exits 2.

Definitions (also written into the JSON report under ``definitions``):

* Request lines: ``"event": "request"`` and an integer ``"schema"`` >= 1.
  Other events and schema versions below 1 are *skipped*.  Fields are read by
  name; fields the report does not use are ignored.  Lines that are not JSON,
  not an object, lack ``event``, ``schema``, ``ts``, ``outcome`` or
  ``fallback_used``, or hold a value that is not of its type (a number that
  is not a number, a negative or non-finite duration or cost, a token count
  beyond 2^127, a timestamp without offset or outside years 0001-9999) are
  *malformed*: counted, the first few quoted with file and line, never fatal.
  A missing nullable field reads as null.  A leap second (``23:59:60``) is
  read as the last microsecond of its minute.  Requests with ``arm: null``
  (routing failed) cannot be attributed to an arm: counted as *unassigned*.
* success: ``outcome == "ok"``; error: any other outcome (client errors and
  client disconnects included -- the outcome breakdown shows which).
* error rate CI: Wilson score interval, 95 %.
* TTFT: over requests with a non-null ``ttft_ms`` (whatever their outcome).
* latency: ``latency_ms`` of successful (``ok``) requests only, so that fast
  failures do not make an arm look faster and timeouts do not count twice
  (they are in the error rate).
* percentiles: linear interpolation between closest ranks (Hyndman & Fan
  type 7, numpy's default): for sorted x[0..n-1], h = (n-1)*p/100,
  P = x[floor h] + (h - floor h) * (x[floor h + 1] - x[floor h]).
* cost per request: mean ``cost_usd`` over requests that have a price (a
  null ``cost_usd`` means the model has no price); cost per 1k requests is
  1000x that; cost per 1M completion tokens is total cost / completion tokens
  of the priced requests x 1e6.  Totals are sums over priced requests; a
  total beyond the largest double is not shown, with a warning.  Token
  totals are exact integers of any size.
* TTFT / latency comparison (arm vs control): difference of medians
  (arm - control) with a 95 % CI from the Bonett & Price (2002) standard
  error of a sample median (distribution-free, from two order statistics of
  each sample; its binomial coverage is exact up to n = 1000 and a normal
  approximation above, within a relative 3e-4).  Significance: two-sided
  Mann-Whitney U test, exact (scipy) when one arm has at most 8 values, the
  other at most 1000 and there are no ties, else the normal approximation
  with tie and continuity correction.  The verdict "significant" comes from
  the U test; the CI sizes the median shift (the two can disagree when
  distributions differ in shape but not in median).  The faster arm is the
  one with the lower median, also when the arms are too small to test.
* error rate comparison: two-sided two-proportion z-test (pooled) for the
  p-value (from erfc, exact in the far tail), Newcombe's hybrid score
  interval for the difference.
* cost comparison: ratio of mean cost per priced request; significance from
  Welch's unequal-variance t-test (t distribution, scipy) on the per-request
  cost.
* No correction for multiple comparisons is applied.

Modules: ``engine`` (the DuckDB connection, the extra's install hint),
``sources`` (inputs -> files DuckDB reads), ``dataset`` (log lines -> per-arm
figures, in DuckDB), ``stats`` (pure statistics), ``summary`` (statistics and
comparisons as data), ``render`` (text and JSON), ``html`` (charts); this
package holds the CLI, ``main``.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
from typing import Any

from .errors import ReportError

# The statistics and the loader need the ``report`` extra (DuckDB, SciPy,
# numpy).  They are imported on first use, so that ``gateway report`` without
# the extra can say what to install instead of failing on an import.
_LAZY = {
    "ArmData": "dataset", "Dataset": "dataset", "load": "dataset", "parse_since": "dataset",
    "INSTALL_HINT": "engine",
    "write_html": "html", "_import_matplotlib": "html",
    "render_json": "render", "render_text": "render",
    "ALPHA": "stats", "Z95": "stats", "Sample": "stats", "mann_whitney_u": "stats",
    "median_diff_ci": "stats", "median_se": "stats", "newcombe_diff_interval": "stats",
    "percentile": "stats", "two_proportion_z_test": "stats", "welch_test": "stats",
    "wilson_interval": "stats",
    "DEFINITIONS": "summary", "ArmStats": "summary", "Comparison": "summary", "CostTest": "summary",
    "PropTest": "summary", "Report": "summary", "ShiftTest": "summary", "pick_control": "summary",
    "summarize": "summary",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "ArmData",
    "ArmStats",
    "Comparison",
    "CostTest",
    "Dataset",
    "PropTest",
    "Report",
    "ReportError",
    "ShiftTest",
    "load",
    "main",
    "mann_whitney_u",
    "median_diff_ci",
    "parse_since",
    "percentile",
    "render_json",
    "render_text",
    "summarize",
    "two_proportion_z_test",
    "welch_test",
    "wilson_interval",
    "write_html",
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gateway report",
        description="A/B report over gateway request logs: TTFT, latency, "
                    "error rate and cost per arm, each arm against the control arm.")
    p.add_argument("logfiles", nargs="*", metavar="LOGFILE",
                   help="request log, plain or gzip, or a quoted glob ('logs/*.jsonl.gz'); "
                        "'-' or none reads stdin")
    p.add_argument("--since", metavar="TIME",
                   help="only requests at or after TIME: RFC 3339 (2026-11-26T04:00:00Z) "
                        "or a duration before now (30m, 2h, 7d)")
    p.add_argument("--route", metavar="NAME", help="only requests for this route")
    p.add_argument("--control", metavar="ARM",
                   help='control arm (default: "control" if present, else the largest arm)')
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="output format on stdout (default: text)")
    p.add_argument("--html", metavar="FILE",
                   help="also write a self-contained HTML page with charts (needs matplotlib)")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 no requests / unreadable
    input, 2 usage error or missing ``report`` extra)."""
    if argv is None:
        argv = sys.argv[1:]
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help -> 0, bad usage -> 2
        return int(e.code or 0)
    try:
        from .engine import require_extra

        require_extra()  # one line naming the install command, before any work
        from .dataset import load, parse_since
        from .html import _import_matplotlib, write_html
        from .render import render_json, render_text
        from .summary import summarize

        if args.html:
            _import_matplotlib()  # fail before reading a big log
        since = parse_since(args.since) if args.since else None
        files = args.logfiles or ["-"]
        if files == ["-"] and getattr(sys.stdin, "isatty", lambda: False)():
            raise ReportError("no LOGFILE given and stdin is a terminal (try --help)")
        with load(files, since=since, route=args.route, keep_lines=bool(args.html)) as ds:
            requests = ds.requests
            report = summarize(ds, control=args.control)
            if args.format == "json":
                sys.stdout.write(render_json(report).decode("utf-8"))
            else:
                text = render_text(report)
                sys.stdout.write(text if text.endswith("\n") else text + "\n")
            sys.stdout.flush()
            if args.html:
                write_html(report, ds, args.html)
                print(f"gateway report: wrote {args.html}", file=sys.stderr)
    except ReportError as e:
        print(f"gateway report: {e}", file=sys.stderr)
        return e.code
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass
        return 1
    if not requests:
        print("gateway report: no request lines matched", file=sys.stderr)
        return 1
    return 0


# `python -m gateway.report` runs __main__.py; this guard stays so the CLI
# entry point is visible here too (tests/test_report.py looks for it).
if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
