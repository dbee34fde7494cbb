"""The report as a self-contained HTML page with charts.  matplotlib is an
optional extra, imported only when a page is written."""

from __future__ import annotations

import base64
import html as _html
import io
from typing import Any

from .dataset import Dataset, utc_of_us
from .engine import INSTALL_HINT
from .errors import ReportError
from .render import render_text
from .stats import percentile
from .summary import Report

_LAST_US = 253402300799 * 10**6  # 9999-12-31T23:59:59Z, matplotlib's last date

_BUCKETS = (1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
            7 * 86400)


def _bucket_width(span: float, target: int = 60) -> int:
    for b in _BUCKETS:
        if span / b <= target:
            return b
    return _BUCKETS[-1]


def _duration_words(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}-{unit}"
    return f"{seconds}-second"


def _import_matplotlib() -> Any:
    """matplotlib's Figure class (object API: no pyplot, no global backend
    switch, nothing to close)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError(f"--html needs matplotlib: {INSTALL_HINT}", 2) from None
    return Figure


def _png_data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    # metadata Software=None: no matplotlib URL inside the PNG either
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _finish_time_chart(fig: Any, ax: Any, width: int, span: tuple[Any, Any], ylabel: str, title: str) -> None:
    """Labels, grid, legend and x range shared by the charts over time.  The
    x range is the data's own: matplotlib's default margin would reach before
    year 1 for a log that starts there, and its dates stop at year 1."""
    ax.set_xlim(*span)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(f"time (UTC), {_duration_words(width)} buckets")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.autofmt_xdate()


def write_html(report: Report, dataset: Dataset, path: str) -> None:
    """Write a self-contained HTML page (text report + charts as inline PNG
    data URIs; no external URLs).  Raises ReportError if matplotlib is
    missing."""
    Figure = _import_matplotlib()
    names = list(report.arms)
    images: list[tuple[str, str]] = []

    # 1. TTFT distribution: ECDF, drawn from 1001 quantiles per arm
    fig = Figure(figsize=(8, 4.2))
    ax = fig.subplots()
    drew = False
    for k in names:
        xs = dataset.arms[k].ttft
        if not len(xs):
            continue
        qs = [i / 10 for i in range(1001)]
        ax.plot([percentile(xs, q) for q in qs], [q / 100 for q in qs],
                label=f"{k} (n={len(xs):,}, p50={percentile(xs, 50):,.0f} ms)")
        drew = True
    if drew:
        if all(dataset.arms[k].ttft[0] > 0 for k in names if len(dataset.arms[k].ttft)):
            ax.set_xscale("log")
        ax.legend(loc="lower right")
    ax.set_xlabel("time to first token (ms)")
    ax.set_ylabel("fraction of requests ≤ x")
    ax.set_title("TTFT distribution per arm (ECDF)")
    ax.grid(True, alpha=0.3)
    images.append(("TTFT distribution", _png_data_uri(fig)))

    # 2. latency p50/p95 per time bucket, 3. error rate per time bucket
    firsts = [a.first_us for a in dataset.arms.values() if a.first_us is not None]
    lasts = [a.last_us for a in dataset.arms.values() if a.last_us is not None]
    if firsts:
        t0, t1 = min(firsts), max(lasts)
        width = _bucket_width(max((t1 - t0) / 1e6, 1.0))
        rows = dataset.over_time(t0, width)
        # bucket -> its middle as a datetime, in integer microseconds (a float
        # of seconds cannot hold the ends of years 0001..9999)
        to_dt = lambda i: utc_of_us(min(t0 + (2 * i + 1) * width * 500_000, t1))  # noqa: E731
        span = (utc_of_us(t0), utc_of_us(min(t0 + max(t1 - t0, width * 10**6), _LAST_US)))
        fig = Figure(figsize=(9, 4.2))
        ax = fig.subplots()
        for idx, k in enumerate(names):
            mine = [r for r in rows if r[0] == k]
            p50 = [(to_dt(b), q50) for _, b, _, _, q50, _, n_ok in mine if n_ok >= 5]
            p95 = [(to_dt(b), q95) for _, b, _, _, _, q95, n_ok in mine if n_ok >= 20]
            color = f"C{idx}"
            if p50:
                ax.plot(*zip(*p50), color=color, marker=".", label=f"{k} p50")
            if p95:
                ax.plot(*zip(*p95), color=color, linestyle="--", label=f"{k} p95")
        _finish_time_chart(fig, ax, width, span, "latency of ok requests (ms)",
                           "Latency over time per arm (p50 solid, p95 dashed)")
        images.append(("Latency over time", _png_data_uri(fig)))

        fig = Figure(figsize=(9, 3.6))
        ax = fig.subplots()
        for idx, k in enumerate(names):
            pts = [(to_dt(b), 100 * errors / n) for arm, b, n, errors, _, _, _ in rows if arm == k]
            if pts:
                ax.plot(*zip(*pts), color=f"C{idx}", marker=".", label=k)
        _finish_time_chart(fig, ax, width, span, "error rate (%)", "Error rate over time per arm")
        images.append(("Error rate over time", _png_data_uri(fig)))

    esc = _html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>gateway report</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
        "pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:13px}"
        "img{max-width:100%;display:block;margin:1em 0}</style>",
        "</head><body>",
        "<h1>gateway report</h1>",
    ]
    for title, uri in images:
        parts.append(f"<h2>{esc(title)}</h2>")
        parts.append(f'<img alt="{esc(title)}" src="{uri}">')
    parts.append("<h2>Figures</h2>")
    parts.append(f"<pre>{esc(render_text(report))}</pre>")
    parts.append("</body></html>\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
