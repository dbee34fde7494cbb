"""Request logs read by DuckDB into per-arm figures.  A clean log takes one
pass: every line classified (counted, malformed, skipped, filtered, without
arm) and aggregated per arm in the same statement, nothing kept but the
figures.  A log with malformed lines is read again into a table, which names
each problem with its file and line."""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .engine import Engine
from .errors import ReportError
from .sources import Inputs, resolve, salvage_gzip
from .stats import Sample, percentile

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_REL_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UTC = _dt.UTC
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_UTC)


def parse_since(text: str, now: float | None = None) -> float:
    """``--since`` value to a Unix timestamp.  Accepts RFC 3339
    (``2026-11-26T04:00:00Z``, ``...+01:00``; a time without an offset or a
    bare date is taken as UTC) or a duration before ``now``: ``90s``, ``30m``,
    ``2h``, ``7d``, ``1w``."""
    m = _REL_RE.match(text)
    if m:
        if now is None:
            now = time.time()
        return now - float(m.group(1)) * _UNITS[m.group(2).lower()]
    try:
        t = _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReportError(
            f"--since: cannot parse {text!r}; use RFC 3339 (2026-11-26T04:00:00Z) "
            "or a duration like 30m, 2h, 7d") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_UTC)
    return t.timestamp()


def utc_of_us(us: int) -> _dt.datetime:
    """Unix microseconds to an aware datetime, in integers: a float of
    seconds cannot hold 9999-12-31T23:59:59.999999 (it rounds into year 10000)."""
    return _EPOCH + _dt.timedelta(microseconds=us)


# Every field the report reads, by name; other fields (the schema grows) are
# never read.  DuckDB reads them in one of two modes:
#
# * typed (the fast path): each field in its own type; DuckDB stops at the
#   first line that is not JSON or holds a value it cannot convert;
# * text (the strict path, taken only when the typed scan stopped): every
#   field as VARCHAR, which never fails to convert, so each bad line is
#   counted as malformed with its reason; the text of a number is cast below.
#
# A line the typed reader accepts is read alike by the text path (``_value``
# converts as the reader does; held line by line by
# tests/test_report_inputs.py), so a log's figures do not depend on whether
# another of its lines is not JSON.  Neither can tell a missing field from a
# null one: DuckDB's reader yields NULL for both.
_FIELDS = ("event", "schema", "ts", "route", "arm", "outcome", "ttft_ms", "latency_ms",
           "prompt_tokens", "completion_tokens", "cost_usd", "fallback_used", "hedged", "hedge_cost_usd")
_TYPES = {"schema": "BIGINT", "ttft_ms": "DOUBLE", "latency_ms": "DOUBLE", "cost_usd": "DOUBLE",
          "prompt_tokens": "HUGEINT", "completion_tokens": "HUGEINT", "fallback_used": "BOOLEAN",
          "hedged": "BOOLEAN", "hedge_cost_usd": "DOUBLE"}


def _columns(typed: bool, route: bool) -> str:
    fields = [f for f in _FIELDS if route or f != "route"]  # route is read only to filter on it
    return "{" + ", ".join(f"'{f}': '{_TYPES.get(f, 'VARCHAR') if typed else 'VARCHAR'}'"
                           for f in fields) + "}"


def _scan(param: str, compression: str, typed: bool, route: bool, file: bool = True) -> str:
    """read_ndjson of the files in ``$param``; ``file``: with each line's
    file name (only needed to name a malformed line)."""
    head = "SELECT filename AS file, * EXCLUDE (filename)" if file else "SELECT *"
    return (f"{head} FROM read_ndjson(${param}, "
            f"columns = {_columns(typed, route)}, records = true, format = 'newline_delimited', "
            f"ignore_errors = {'false' if typed else 'true'}, filename = {'true' if file else 'false'}, "
            f"compression = '{compression}')")


def _value(f: str, typed: bool) -> str:
    """The field in its type: as read (typed mode) or cast from its text as
    the typed reader converts the JSON value: a boolean to a number as 1 or
    0, a number to a boolean as not zero, a string by DuckDB's cast."""
    if typed:
        return f
    if _TYPES[f] == "BOOLEAN":
        return f"coalesce(TRY_CAST({f} AS BOOLEAN), TRY_CAST({f} AS DOUBLE) <> 0)"
    return f"TRY_CAST(CASE {f} WHEN 'true' THEN '1' WHEN 'false' THEN '0' ELSE {f} END AS {_TYPES[f]})"


def _quoted(f: str) -> str:
    return f"'bad value for ''{f}'': ' || left({f}::VARCHAR, 40)"


# Unix microseconds of the RFC 3339 ``ts``, or NULL.  An explicit offset is
# required.  A leap second (``:60``, which TIMESTAMPTZ rejects) is read as
# the last microsecond of its minute; years outside 0001-9999 (RFC 3339's
# range, and Python's) make the line malformed rather than crash later.
_TS_US = r"""
epoch_us(CASE
  WHEN CASE WHEN suffix(ts, 'Z') THEN TRUE WHEN suffix(ts, 'z') THEN TRUE  -- a CASE, not OR: the
            ELSE substr(ts, length(ts) - 5, 1) IN ('+', '-') END             -- common 'Z' ends the test
  THEN coalesce(
    TRY_CAST(ts AS TIMESTAMPTZ),
    CASE WHEN substr(ts, 18, 2) = '60'
         THEN TRY_CAST(regexp_replace(ts, '^(.{17})60(\.[0-9]*)?', '\159.999999') AS TIMESTAMPTZ)
    END)
END)"""
_US_MIN = -62135596800 * 10**6                # 0001-01-01T00:00:00Z
_US_MAX = 253402300799 * 10**6 + 999999       # 9999-12-31T23:59:59.999999Z


def _quick_sql(scans: str, route: bool) -> str:
    """The fast path's lines: typed fields only, and the kind of each line
    (as in ``_classify_sql``) from the same checks written as one boolean,
    without the line's file or the text of its problem.  Both are only
    needed to show malformed lines: when there are any, ``_classify_sql``
    reads the logs again for them."""
    def bad(f: str) -> str:
        return f"({f} IS NOT NULL AND NOT coalesce({f} >= 0 AND isfinite({f}), false))"
    route_filter = "route IS DISTINCT FROM $route" if route else "FALSE"
    return f"""
WITH raw AS ({scans}),
typed AS (SELECT *, {_TS_US} AS us FROM raw)
SELECT arm, outcome, us, ttft_ms AS ttft, latency_ms AS lat, cost_usd AS cost,
  prompt_tokens AS pt, completion_tokens AS ct, fallback_used AS fb,
  coalesce(hedged, false) AS hg,  -- schema 2; a schema-1 line has none (not hedged, no extra cost)
  CASE WHEN hedge_cost_usd >= 0 AND isfinite(hedge_cost_usd) THEN hedge_cost_usd END AS hcost,
  CASE WHEN event IS NULL THEN 1
       WHEN event <> 'request' THEN 2
       WHEN schema IS NULL THEN 1
       WHEN schema < 1 THEN 2
       WHEN ts IS NULL OR outcome IS NULL OR fallback_used IS NULL OR us IS NULL
         OR us < {_US_MIN} OR us > {_US_MAX}
         OR {bad("ttft_ms")} OR {bad("latency_ms")} OR {bad("cost_usd")}
         OR (prompt_tokens IS NOT NULL AND NOT coalesce(prompt_tokens >= 0, false))
         OR (completion_tokens IS NOT NULL AND NOT coalesce(completion_tokens >= 0, false)) THEN 1
       WHEN us < $since_us OR {route_filter} THEN 3
       WHEN arm IS NULL THEN 4
       ELSE 0 END :: TINYINT AS kind
FROM typed
"""


def _classify_sql(scans: str, typed: bool, route: bool) -> str:
    """The lines of the scans, classified and typed, one row per line:
    kind 0 counted, 1 malformed (with its ``problem``), 2 skipped (another
    event or schema), 3 filtered (--since / --route), 4 without arm."""
    v = lambda f: _value(f, typed)  # noqa: E731
    fb = v("fallback_used")
    fb_bad = "FALSE" if typed else f"{fb} IS NULL"
    # Schema 2's hedging fields; a schema-1 line has none (null: not hedged, no extra cost).
    hg = f"coalesce({v('hedged')}, false)"
    route_filter = "route IS DISTINCT FROM $route" if route else "FALSE"
    return f"""
WITH raw AS ({scans}),
typed AS (
  SELECT *, {v("schema")} AS schema_i, {_TS_US} AS us, {v("ttft_ms")} AS ttft, {v("latency_ms")} AS lat,
         {v("cost_usd")} AS cost, {v("prompt_tokens")} AS pt, {v("completion_tokens")} AS ct,
         {v("hedge_cost_usd")} AS hcost
  FROM raw
),
judged AS (
  -- a failed cast is NULL, so every check on a value is coalesced to false
  SELECT *, CASE
    WHEN event IS NULL THEN 'not a JSON object with an ''event'' field'
    WHEN event <> 'request' THEN NULL
    WHEN schema_i IS NULL THEN 'missing or non-integer ''schema'''
    WHEN schema_i < 1 THEN NULL
    WHEN ts IS NULL THEN 'missing field ''ts'''
    WHEN outcome IS NULL THEN 'missing field ''outcome'''
    WHEN fallback_used IS NULL THEN 'missing field ''fallback_used'''
    WHEN us IS NULL THEN 'bad timestamp ' || left(ts, 40)
    WHEN us < {_US_MIN} OR us > {_US_MAX} THEN 'timestamp out of range (years 0001-9999): ' || left(ts, 40)
    WHEN {fb_bad} THEN {_quoted("fallback_used")}
    WHEN ttft_ms IS NOT NULL AND NOT coalesce(ttft >= 0 AND isfinite(ttft), false) THEN {_quoted("ttft_ms")}
    WHEN latency_ms IS NOT NULL AND NOT coalesce(lat >= 0 AND isfinite(lat), false) THEN {_quoted("latency_ms")}
    WHEN cost_usd IS NOT NULL AND NOT coalesce(cost >= 0 AND isfinite(cost), false) THEN {_quoted("cost_usd")}
    WHEN prompt_tokens IS NOT NULL AND NOT coalesce(pt >= 0, false) THEN {_quoted("prompt_tokens")}
    WHEN completion_tokens IS NOT NULL AND NOT coalesce(ct >= 0, false) THEN {_quoted("completion_tokens")}
  END AS problem
  FROM typed
)
SELECT file, problem, us, arm, outcome, ttft, lat, cost,
  pt, ct, {fb} AS fb, {hg} AS hg, CASE WHEN hcost >= 0 AND isfinite(hcost) THEN hcost END AS hcost,
  CASE WHEN problem IS NOT NULL THEN 1
       WHEN event <> 'request' OR schema_i < 1 THEN 2
       WHEN us < $since_us OR {route_filter} THEN 3
       WHEN arm IS NULL THEN 4
       ELSE 0 END :: TINYINT AS kind
FROM judged
"""


# Token sums are exact: DuckDB sums HUGEINT counts (each up to 2^127) in
# HUGEINT.  Should a sum pass 2^127, each count is split at 2^64 so neither
# half's sum can overflow, and the halves are joined in Python's integers.
_TWO64 = 2**64


def _summary_sql(source: str, split: bool) -> str:
    """Everything the report needs from the lines of ``source`` (the quick
    scan, or the table ``lines``), in one pass: one row per kind, arm,
    outcome and hedged or not, with the line count, sums and extremes, the
    cost moments, and the durations themselves (the statistics need whole
    samples).  Grouping by outcome and hedging counts the outcomes and
    separates the samples (TTFT hedged and not, latency of ok requests)
    without a filter or a map per line.  Only kind 0's figures are used;
    the other kinds are counted."""
    def tokens(col: str, cond: str = "") -> str:
        where = f" FILTER ({cond})" if cond else ""
        if not split:
            return f"sum({col}){where}, 0"
        return f"sum({col} // {_TWO64}){where}, sum({col} % {_TWO64}){where}"
    return f"""
SELECT kind, arm, count(*), outcome, hg, count(*) FILTER (fb), min(us), max(us),
       {tokens("pt")}, {tokens("ct")}, {tokens("ct", "cost IS NOT NULL")},
       count(cost), max(cost), fsum(cost), var_samp(cost), fsum(hcost), fsum(lat),
       list(ttft) FILTER (ttft IS NOT NULL), list(lat) FILTER (lat IS NOT NULL)
FROM {source} GROUP BY kind, arm, outcome, hg
"""


# The cost moments of the summary are of the costs as they are; beyond
# 2^500 (or below 2^-500) their squares could overflow (or lose digits), and
# this query takes them again on costs scaled by a power of two (exact for
# normal numbers): the largest cost scales to [0.5, 1), so neither the sum nor
# the squares of a log full of 1e308 overflow.  Welch's t and the arms' ratio
# do not change with the scale; only the displayed totals are scaled back.
_COST_SAFE = (2.0**-500, 2.0**500)
_SCALED_COST = """
SELECT arm, fsum(cost * $scale), var_samp(cost * $scale)
FROM {source} WHERE kind = 0 AND cost IS NOT NULL GROUP BY arm
"""

_MAX_EXAMPLES = 5


def rescale(x: float, exp: int) -> float:
    """x * 2**exp, inf where the product exceeds a double."""
    try:
        return math.ldexp(x, exp)
    except OverflowError:
        return math.inf


@dataclass
class ArmData:
    """One arm's figures as read from the log (aggregated by DuckDB)."""
    name: str
    requests: int = 0
    successes: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    ttft: Sample = field(default_factory=lambda: Sample([], []))      # ttft_ms, any outcome
    latency: Sample = field(default_factory=lambda: Sample([], []))   # latency_ms, ok only
    latency_sum_ms: float = 0.0                    # of those latencies (DuckDB's fsum)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    priced_completion_tokens: int = 0
    fallbacks: int = 0
    hedged: int = 0                                # requests that started a hedge
    ttft_p95_hedged_ms: float | None = None
    ttft_p95_unhedged_ms: float | None = None
    hedge_cost_usd: float = 0.0                    # the hedge losers' estimated cost
    first_us: int | None = None
    last_us: int | None = None
    priced: int = 0                    # requests with a cost_usd
    cost_sum_scaled: float = 0.0       # sum of cost_usd * 2**-cost_exp
    cost_var_scaled: float = math.nan  # sample variance of cost_usd * 2**-cost_exp
    cost_exp: int = 0                  # shared by all arms of a dataset

    @property
    def cost_usd(self) -> float:
        return rescale(self.cost_sum_scaled, self.cost_exp)

    def latency_mean_ms(self) -> float | None:
        """The mean latency of ok requests: their sum over their count, or
        where the sum overflows (latencies near 1e308), the sample's own
        overflow-safe mean."""
        if not len(self.latency):
            return None
        if math.isfinite(self.latency_sum_ms):
            return self.latency_sum_ms / len(self.latency)
        return self.latency.mean()


@dataclass
class Dataset:
    arms: dict[str, ArmData] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    lines: int = 0          # non-blank lines read
    malformed: int = 0      # not JSON / not an object / missing or mistyped field
    skipped: int = 0        # valid JSON, but another event or schema version
    filtered: int = 0       # request lines excluded by --since / --route
    unassigned: int = 0     # request lines with arm null
    malformed_examples: list[str] = field(default_factory=list)
    since: float | None = None
    route: str | None = None
    engine: Engine | None = field(default=None, repr=False)
    reader: _Reader | None = field(default=None, repr=False)

    @property
    def requests(self) -> int:
        return sum(a.requests for a in self.arms.values())

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def over_time(self, t0_us: int, width_s: int) -> list[tuple[str, int, int, int, Any, Any, int]]:
        """Per arm and time bucket of ``width_s`` from ``t0_us``: (arm, bucket,
        requests, errors, ok with latency, latency p50, latency p95)."""
        if self.engine is None:
            raise ReportError("the dataset is closed")
        if self.reader is not None:
            self.reader.keep_lines()
        rows: list[tuple[str, int, int, int, Any, Any, int]] = self.engine.con.execute("""
            SELECT arm, (us - $t0) // $w AS b, count(*), count(*) FILTER (outcome <> 'ok'),
                   quantile_cont(lat, 0.5) FILTER (outcome = 'ok'),
                   quantile_cont(lat, 0.95) FILTER (outcome = 'ok'),
                   count(lat) FILTER (outcome = 'ok')
            FROM lines WHERE kind = 0 GROUP BY ALL ORDER BY arm, b""",
            {"t0": t0_us, "w": width_s * 10**6}).fetchall()
        return rows


def _since_us(since: float | str | _dt.datetime | None) -> tuple[float | None, int]:
    if isinstance(since, str):
        since = parse_since(since)
    elif isinstance(since, _dt.datetime):
        since = (since if since.tzinfo else since.replace(tzinfo=_UTC)).timestamp()
    if since is None:
        return None, _US_MIN
    return since, round(since * 1e6)


def load(sources: Iterable[Any] | Any = None, since: float | str | _dt.datetime | None = None,
         route: str | None = None, memory_limit: str | None = None, keep_lines: bool = False) -> Dataset:
    """Read request logs into per-arm figures.

    ``sources``: paths, glob patterns (``'logs/*.jsonl.gz'``) and/or binary
    streams (``-``, ``None`` or empty means ``sys.stdin.buffer``); each may
    be gzip.  ``since``: Unix seconds, an aware datetime or a ``--since``
    string; requests with ``ts`` earlier are filtered out.  ``route``: keep
    only that route.  ``memory_limit``: DuckDB's (e.g. ``"1GB"``); beyond it
    DuckDB spills to a temp directory.  ``keep_lines``: keep a table of the
    lines for ``Dataset.over_time`` (the HTML charts); without it a clean
    log is read in one pass and nothing is kept but the figures.  Close the
    result (or use it as a context manager) to free DuckDB and its temp files.
    """
    if sources is None or isinstance(sources, (str, bytes)) or hasattr(sources, "read") \
            or hasattr(sources, "__fspath__"):
        sources = [sources] if sources is not None else []
    sources = list(sources) or ["-"]
    since_s, since_us = _since_us(since)
    engine = Engine(memory_limit)
    ds = Dataset(since=since_s, route=route, engine=engine)
    weakref.finalize(ds, engine.close)
    try:
        inputs = resolve(sources, engine.tmp)
        ds.sources = inputs.names
        reader = ds.reader = _Reader(engine, inputs, since_us, route)
        rows = reader.summary(ds, keep_lines)
        _count(engine, inputs, ds, rows)
        _per_arm(reader, ds, rows)
    except BaseException:
        ds.close()
        raise
    return ds


class _Reader:
    """The inputs read into summary rows (``_summary_sql``), the fastest way
    that can read them.  ``source`` is where the lines are afterwards: the
    table ``lines``, or the quick scan's SQL, read again only for the rare
    scaled cost moments or the charts."""

    def __init__(self, engine: Engine, inputs: Inputs, since_us: int, route: str | None) -> None:
        self.con = engine.con
        self.engine = engine
        self.inputs = inputs
        self.route = route
        self.params: dict[str, Any] = {"since_us": since_us}
        if route is not None:
            self.params["route"] = route
        self.source = "lines"
        self.split = False  # the summary's token sums are split at 2^64 (see _summary_sql)
        self.lines = 0      # lines the summary counted
        self.mode = ""      # how they were read: "quick" (one pass), "typed" or "text" (a table)

    def _scans(self, typed: bool, file: bool) -> str:
        scans = []
        for param, files, compression in (("plain", self.inputs.plain, "none"), ("gz", self.inputs.gzip, "gzip")):
            if files:
                scans.append(_scan(param, compression, typed, self.route is not None, file=file))
                self.params[param] = files
            else:
                self.params.pop(param, None)
        return " UNION ALL ".join(scans)

    def _table(self, sql: str, ordered: bool) -> None:
        self.con.execute("DROP TABLE IF EXISTS lines")
        # Line numbers (rowid, for malformed lines) need the scan's order;
        # the quick table's figures do not, and DuckDB builds it faster unordered.
        self.con.execute(f"SET preserve_insertion_order = {'true' if ordered else 'false'}")
        self.con.execute(f"CREATE TEMP TABLE lines AS {sql}", self.params)
        self.source = "lines"

    def rows(self) -> list[tuple[Any, ...]]:
        """The summary of ``self.source``; a HUGEINT sum beyond 2^127 is taken again, split."""
        import duckdb

        try:
            return self._summary(split=False)
        except duckdb.OutOfRangeException:
            return self._summary(split=True)

    def _source(self) -> tuple[str, dict[str, Any]]:
        """The lines to aggregate, as a FROM item, and its parameters."""
        if self.source == "lines":
            return "lines", {}
        return f"({self.source})", self.params

    def _summary(self, split: bool) -> list[tuple[Any, ...]]:
        source, params = self._source()
        cols = self.con.execute(_summary_sql(source, split), params).fetchnumpy()
        self.split = split
        rows = list(zip(*cols.values()))
        self.lines = sum(int(r[2]) for r in rows)
        return rows

    def keep_lines(self) -> None:
        """Make the table ``lines`` (for ``Dataset.over_time``) when the logs
        were read in one pass without it: they are read again, and must not
        have changed (a log still being written would add lines the figures
        do not count)."""
        import duckdb

        if self.source == "lines":
            return
        scan = self.source
        try:
            self._table(scan, ordered=False)
            n = self.con.execute("SELECT count(*) FROM lines").fetchone()[0]
        except duckdb.Error as e:
            self.source = scan
            raise ReportError(f"cannot read the logs again: {e}", 1) from None
        if n != self.lines:
            self.source = scan  # the next call tries again, rather than chart the wrong lines
            raise ReportError(f"the logs changed while they were read ({self.lines:,} lines, then {n:,}); "
                              "read them again with load(..., keep_lines=True)", 1)

    def _quick(self, keep_lines: bool) -> list[tuple[Any, ...]]:
        self.mode = "quick"
        sql = _quick_sql(self._scans(typed=True, file=False), self.route is not None)
        if keep_lines:
            self._table(sql, ordered=False)
        else:
            self.con.execute("SET preserve_insertion_order = false")
            self.source = sql
        return self.rows()

    def _classified(self, typed: bool) -> list[tuple[Any, ...]]:
        self.mode = "typed" if typed else "text"
        self._table(_classify_sql(self._scans(typed, file=True), typed, self.route is not None), ordered=True)
        return self.rows()

    def _any(self, keep_lines: bool) -> list[tuple[Any, ...]]:
        import duckdb

        try:
            rows = self._quick(keep_lines)
            if not any(r[0] == 1 for r in rows):
                return rows
            return self._classified(typed=True)  # malformed lines: again, with their files and problems
        except duckdb.InvalidInputException:  # a line that is not JSON, or a value of the wrong type
            return self._classified(typed=False)

    def summary(self, ds: Dataset, keep_lines: bool) -> list[tuple[Any, ...]]:
        import duckdb

        if not self.inputs.plain and not self.inputs.gzip:
            raise ReportError("no input files", 1)
        try:
            try:
                return self._any(keep_lines)
            except duckdb.IOException:
                # A damaged gzip (truncated rotation, copy cut short) stops DuckDB's
                # whole scan; read the gzip inputs in Python up to the damage instead.
                problems = salvage_gzip(self.inputs, self.engine.tmp)
                if not problems:
                    raise
                ds.malformed += len(problems)
                ds.lines += len(problems)
                ds.malformed_examples.extend(problems[:_MAX_EXAMPLES])
                return self._any(keep_lines)
        except duckdb.Error as e:
            raise ReportError(f"cannot read the logs: {e}", 1) from None

    def scaled_costs(self, scale: float) -> list[tuple[str, float, float | None]]:
        source, params = self._source()
        rows: list[tuple[str, float, float | None]] = self.con.execute(
            _SCALED_COST.format(source=source), {**params, "scale": scale}).fetchall()
        return rows


def _count(engine: Engine, inputs: Inputs, ds: Dataset, rows: list[tuple[Any, ...]]) -> None:
    counts: dict[int, int] = {}
    for row in rows:
        counts[int(row[0])] = counts.get(int(row[0]), 0) + int(row[2])
    ds.lines += sum(counts.values())
    ds.malformed += counts.get(1, 0)
    ds.skipped += counts.get(2, 0)
    ds.filtered += counts.get(3, 0)
    ds.unassigned += counts.get(4, 0)
    room = _MAX_EXAMPLES - len(ds.malformed_examples)
    if counts.get(1) and room > 0:
        # rowid follows the scan order (DuckDB preserves insertion order), so
        # the line number is the row's place in its file, blank lines not counted
        found = engine.con.execute("""
            SELECT file, rowid - (SELECT min(rowid) FROM lines l2 WHERE l2.file = l.file) + 1, problem
            FROM lines l WHERE kind = 1 ORDER BY rowid LIMIT $room""", {"room": room}).fetchall()
        ds.malformed_examples.extend(f"{inputs.display.get(f, f)}:{n}: {why}" for f, n, why in found)


def _present(x: Any) -> bool:
    """A value of a fetched column: not NULL (masked by fetchnumpy, or None)."""
    import numpy as np

    return x is not None and x is not np.ma.masked


def _array(*lists: Any) -> Any:
    """The values of list cells (NULL where a FILTER left none) as one float64 array."""
    import numpy as np

    parts = [x for x in lists if _present(x)]
    if len(parts) == 1:
        return np.asarray(parts[0], dtype=np.float64)
    return np.concatenate(parts).astype(np.float64, copy=False) if parts else np.empty(0)


def _samples(arrays: list[Any]) -> list[Sample]:
    """``Sample.of`` each, two or more at a time: numpy sorts without the
    GIL, and the machine's cores are idle once DuckDB is done."""
    if len(arrays) < 2:
        return [Sample.of(a) for a in arrays]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(arrays), os.cpu_count() or 1)) as pool:
        return list(pool.map(Sample.of, arrays))


def _pooled_cost(groups: list[tuple[int, float, float]]) -> tuple[float, float | None]:
    """The sum and sample variance of an arm's costs from each group's count,
    sum and sample variance (0 for a group of one): the groups' squared
    deviations plus each group's count times its mean's squared deviation."""
    n = sum(k for k, _, _ in groups)
    total = math.fsum(s for _, s, _ in groups)
    if n < 2:
        return total, None
    mean = total / n
    m2 = math.fsum((k - 1) * var + k * (s / k - mean) ** 2 for k, s, var in groups)
    return total, m2 / (n - 1)


@dataclass
class _ArmGroups:
    """What an arm's summary rows (one per outcome and hedged or not) hold
    that is joined only once all are read."""
    costs: list[tuple[int, float, float]] = field(default_factory=list)  # each group's priced, sum, variance
    hedge_costs: list[float] = field(default_factory=list)
    latency_sums: list[float] = field(default_factory=list)   # of ok requests
    hedged_ttfts: list[Any] = field(default_factory=list)     # list cells, one per group
    other_ttfts: list[Any] = field(default_factory=list)
    ok_latencies: list[Any] = field(default_factory=list)


def _per_arm(reader: _Reader, ds: Dataset, rows: list[tuple[Any, ...]]) -> None:
    unit = _TWO64 if reader.split else 1

    def join(hi: Any, lo: Any) -> int:
        return int(hi or 0) * unit + int(lo or 0)

    max_cost = 0.0
    groups: dict[str, _ArmGroups] = {}
    for (kind, arm, n, outcome, hedged, fallbacks, first, last, pt_hi, pt_lo, ct_hi, ct_lo, pct_hi, pct_lo,
         priced, group_max_cost, cost_sum, cost_var, hedge_cost, latency_sum, ttfts, latencies) in rows:
        if kind != 0:
            continue
        if arm not in groups:
            ds.arms[arm], groups[arm] = ArmData(name=arm), _ArmGroups()
        a, g = ds.arms[arm], groups[arm]
        a.requests += int(n)
        a.outcomes[outcome] = a.outcomes.get(outcome, 0) + int(n)
        a.fallbacks += int(fallbacks)
        a.first_us = int(first) if a.first_us is None else min(a.first_us, int(first))
        a.last_us = int(last) if a.last_us is None else max(a.last_us, int(last))
        a.prompt_tokens += join(pt_hi, pt_lo)
        a.completion_tokens += join(ct_hi, ct_lo)
        a.priced_completion_tokens += join(pct_hi, pct_lo)
        if priced:
            a.priced += int(priced)
            max_cost = max(max_cost, float(group_max_cost))
            g.costs.append((int(priced), float(cost_sum), float(cost_var) if _present(cost_var) else 0.0))
        if hedged:
            a.hedged += int(n)
            g.hedged_ttfts.append(ttfts)
            if _present(hedge_cost):
                g.hedge_costs.append(float(hedge_cost))
        else:
            g.other_ttfts.append(ttfts)
        if outcome == "ok":
            g.ok_latencies.append(latencies)
            if _present(latency_sum):
                g.latency_sums.append(float(latency_sum))
    # per arm: its latencies and its TTFTs (when it hedged, the hedged and the
    # other TTFTs apart, and all of them merged from the two)
    durations: dict[str, list[Any]] = {}
    for arm, g in groups.items():
        a = ds.arms[arm]
        a.outcomes = dict(sorted(a.outcomes.items()))
        a.successes = a.outcomes.get("ok", 0)
        a.hedge_cost_usd = math.fsum(g.hedge_costs)
        a.latency_sum_ms = math.fsum(g.latency_sums)
        durations[arm] = [_array(*g.ok_latencies), _array(*g.other_ttfts)]
        if a.hedged:
            durations[arm].append(_array(*g.hedged_ttfts))
    samples = iter(_samples([x for arrays in durations.values() for x in arrays]))
    for arm in durations:
        a = ds.arms[arm]
        a.latency, other = next(samples), next(samples)
        a.ttft_p95_unhedged_ms = percentile(other, 95)
        if a.hedged:
            hedged = next(samples)
            a.ttft = Sample.merged(hedged, other)
            a.ttft_p95_hedged_ms = percentile(hedged, 95)
        else:  # no hedges (schema 1, or none needed): the other TTFTs are all of them
            a.ttft = other
    if not ds.arms:
        return
    cost_sums = {arm: _pooled_cost(g.costs) for arm, g in groups.items() if g.costs}
    exp = 0
    overflowed = not all(math.isfinite(x) for pair in cost_sums.values() for x in pair if x is not None)
    if overflowed or (max_cost > 0 and not _COST_SAFE[0] <= max_cost < _COST_SAFE[1]):
        exp = math.frexp(max_cost)[1]
        cost_sums = {arm: (total, var) for arm, total, var in reader.scaled_costs(math.ldexp(1.0, -exp))}
    for name, a in ds.arms.items():
        total, var = cost_sums.get(name, (0.0, None))
        a.cost_exp, a.cost_sum_scaled, a.cost_var_scaled = exp, total, (math.nan if var is None else var)
