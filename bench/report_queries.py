"""The queries both report benchmarks run (bench_report.py in time,
bench_report_instructions.py in instructions).  Nothing here puts a
checkout on sys.path: the instructions benchmark runs another checkout's
report by PYTHONPATH."""

from __future__ import annotations

import re

# DuckDB alone: requests and TTFT p50/p95/p99 per arm, of the files in $f
ALONE = """
    SELECT arm, count(*), quantile_cont(ttft_ms, [0.5, 0.95, 0.99])
    FROM read_ndjson($f, columns = {'arm': 'VARCHAR', 'ttft_ms': 'DOUBLE'})
    GROUP BY arm"""

# The same, as one types it by hand: DuckDB detects the schema from a sample
# of the lines.  Shown beside (bench_report.py --detected); the target's
# baseline is ALONE, which is told the two fields' types.
ALONE_DETECTED = """
    SELECT arm, count(*), quantile_cont(ttft_ms, [0.5, 0.95, 0.99])
    FROM read_ndjson($f)
    GROUP BY arm"""


def params(files: list[str]) -> dict[str, object]:
    """The parameters of these queries on ``files``: the report's own for a
    run without ``--since``."""
    from gateway.report.dataset import _since_us

    return {"f": files, "since_us": _since_us(None)[1]}


def floor_sql(compression: str) -> str:
    """The fields the report reads from the files in $f, typed as it reads
    them, one count each: no checks, no aggregates."""
    from gateway.report.dataset import _FIELDS, _scan

    counts = ", ".join(f"count({f})" for f in _FIELDS if f != "route")
    return f"SELECT {counts} FROM ({_scan('f', compression, typed=True, route=False, file=False)})"


def parts() -> dict[str, str]:
    """The report's one-pass statement (gateway/report/dataset.py) on the
    plain files in $f, built up step by step: the floor, every line's kind,
    the aggregates without the samples, the whole statement."""
    from gateway.report import dataset as d

    scan = d._scan("f", "none", True, route=False, file=False)
    quick = d._quick_sql(scan, route=False)
    full = d._summary_sql(f"({quick})", split=False)
    no_samples = re.sub(r",\s*list\(.*?\)\s*FILTER \(.*?\)(?=,|\s*FROM)", ", 0", full, flags=re.S)
    assert no_samples != full and "list(" not in no_samples
    return {
        "floor": floor_sql("none"),
        "kinds": f"SELECT kind, arm, count(*) FROM ({quick}) GROUP BY kind, arm",
        "aggregates": no_samples,
        "statement": full,
    }
