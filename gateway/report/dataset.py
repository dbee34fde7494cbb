"""Request logs read by DuckDB into per-arm figures: one scan of every input
into a typed table, classified line by line (counted, malformed, skipped,
filtered, without arm), then small aggregate queries over that table."""

from __future__ import annotations

import datetime as _dt
import math
import re
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .engine import Engine
from .errors import ReportError
from .sources import Inputs, resolve, salvage_gzip
from .stats import Sample

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


# Every field the report reads, by name, declared VARCHAR so that DuckDB's
# reader never silently turns a value of the wrong type into NULL: the text
# is cast below, and a failed cast is a counted malformed line with a reason.
# Other fields (the schema grows) are not read at all.
_FIELDS = ("event", "schema", "ts", "route", "arm", "outcome", "ttft_ms", "latency_ms",
           "prompt_tokens", "completion_tokens", "cost_usd", "fallback_used")
_COLUMNS = "{" + ", ".join(f"'{f}': 'VARCHAR'" for f in _FIELDS) + "}"


def _scan(param: str, compression: str) -> str:
    return (f"SELECT filename AS file, * EXCLUDE (filename) FROM read_ndjson(${param}, "
            f"columns = {_COLUMNS}, records = true, format = 'newline_delimited', "
            f"ignore_errors = true, filename = true, compression = '{compression}')")


def _number(f: str, kind: str = "DOUBLE") -> str:
    return f"TRY_CAST({f} AS {kind})"


def _quoted(f: str) -> str:
    return f"'bad value for ''{f}'': ' || left({f}, 40)"


# Unix microseconds of the RFC 3339 ``ts``, or NULL.  An explicit offset is
# required.  A leap second (``:60``, which TIMESTAMPTZ rejects) is read as
# the last microsecond of its minute; years outside 0001-9999 (RFC 3339's
# range, and Python's) make the line malformed rather than crash later.
_TS_US = """
CASE WHEN NOT (suffix(ts, 'Z') OR suffix(ts, 'z') OR substr(ts, length(ts) - 5, 1) IN ('+', '-'))
     THEN NULL
     ELSE epoch_us(coalesce(
        TRY_CAST(ts AS TIMESTAMPTZ),
        CASE WHEN substr(ts, 18, 2) = '60'
             THEN TRY_CAST(regexp_replace(ts, '^(.{17})60(\\.[0-9]*)?', '\\159.999999') AS TIMESTAMPTZ)
        END))
END"""
_US_MIN = -62135596800 * 10**6                # 0001-01-01T00:00:00Z
_US_MAX = 253402300799 * 10**6 + 999999       # 9999-12-31T23:59:59.999999Z

# kind: 0 counted, 1 malformed, 2 skipped (another event or schema),
#       3 filtered (--since / --route), 4 without arm
_CLASSIFY = f"""
CREATE TEMP TABLE lines AS
WITH raw AS ({{scans}}),
typed AS (
  SELECT file, event, route, arm, outcome, ts, ttft_ms, latency_ms, prompt_tokens,
         completion_tokens, cost_usd, fallback_used,
         {_number("schema", "BIGINT")} AS schema_i,
         {_TS_US} AS us,
         {_number("ttft_ms")} AS ttft, {_number("latency_ms")} AS lat,
         {_number("cost_usd")} AS cost,
         {_number("prompt_tokens", "HUGEINT")} AS pt, {_number("completion_tokens", "HUGEINT")} AS ct
  FROM raw
),
judged AS (
  SELECT *, CASE
    WHEN event IS NULL THEN 'not a JSON object with an ''event'' field'
    WHEN event <> 'request' THEN NULL
    WHEN schema_i IS NULL THEN 'missing or non-integer ''schema'''
    WHEN schema_i < 1 THEN NULL
    WHEN ts IS NULL THEN 'missing field ''ts'''
    WHEN outcome IS NULL THEN 'missing field ''outcome'''
    WHEN fallback_used IS NULL THEN 'missing field ''fallback_used'''
    -- a failed cast is NULL, so every check below is coalesced to false
    WHEN us IS NULL THEN 'bad timestamp ' || left(ts, 40)
    WHEN us < {_US_MIN} OR us > {_US_MAX} THEN 'timestamp out of range (years 0001-9999): ' || left(ts, 40)
    WHEN fallback_used NOT IN ('true', 'false') THEN {_quoted("fallback_used")}
    WHEN ttft_ms IS NOT NULL AND NOT coalesce(ttft >= 0 AND isfinite(ttft), false) THEN {_quoted("ttft_ms")}
    WHEN latency_ms IS NOT NULL AND NOT coalesce(lat >= 0 AND isfinite(lat), false) THEN {_quoted("latency_ms")}
    WHEN cost_usd IS NOT NULL AND NOT coalesce(cost >= 0 AND isfinite(cost), false) THEN {_quoted("cost_usd")}
    WHEN prompt_tokens IS NOT NULL AND NOT coalesce(pt >= 0, false) THEN {_quoted("prompt_tokens")}
    WHEN completion_tokens IS NOT NULL AND NOT coalesce(ct >= 0, false) THEN {_quoted("completion_tokens")}
  END AS problem
  FROM typed
)
SELECT file, problem, us, arm, outcome, ttft, lat, cost, pt, ct, fallback_used = 'true' AS fb,
  CASE WHEN problem IS NOT NULL THEN 1
       WHEN event <> 'request' OR schema_i < 1 THEN 2
       WHEN us < $since_us OR ($route IS NOT NULL AND route IS DISTINCT FROM $route) THEN 3
       WHEN arm IS NULL THEN 4
       ELSE 0 END :: TINYINT AS kind
FROM judged
"""

# Token sums are exact: split each count (HUGEINT, up to 2^127) at 2^64 so
# neither half's sum can overflow, and join the halves in Python's integers.
_TWO64 = 2**64


def _tokens(col: str, cond: str = "TRUE") -> str:
    return (f"sum({col} // {_TWO64}) FILTER ({cond}), "
            f"sum({col} % {_TWO64}) FILTER ({cond})")


_PER_ARM = f"""
SELECT arm, count(*) AS n, count(*) FILTER (outcome = 'ok') AS ok,
       count(*) FILTER (fb) AS fallbacks, min(us), max(us),
       {_tokens("pt")}, {_tokens("ct")}, {_tokens("ct", "cost IS NOT NULL")},
       count(cost), max(cost)
FROM lines WHERE kind = 0 GROUP BY arm
"""

# Cost moments on costs scaled by a power of two (exact for normal numbers):
# the largest cost scales to [0.5, 1), so neither the sum nor the squares
# of a log full of 1e308 overflow.  Welch's t and the arms' ratio do not
# change with the scale; only the displayed totals are scaled back.
_COST = """
SELECT arm, fsum(cost * $scale), var_samp(cost * $scale)
FROM lines WHERE kind = 0 AND cost IS NOT NULL GROUP BY arm
"""

_HISTOGRAMS = """
SELECT 0 AS metric, arm, ttft AS v, count(*) AS c FROM lines WHERE kind = 0 AND ttft IS NOT NULL GROUP BY ALL
UNION ALL
SELECT 1, arm, lat, count(*) FROM lines WHERE kind = 0 AND outcome = 'ok' AND lat IS NOT NULL GROUP BY ALL
ORDER BY metric, arm, v
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
    prompt_tokens: int = 0
    completion_tokens: int = 0
    priced_completion_tokens: int = 0
    fallbacks: int = 0
    first_us: int | None = None
    last_us: int | None = None
    priced: int = 0                    # requests with a cost_usd
    cost_sum_scaled: float = 0.0       # sum of cost_usd * 2**-cost_exp
    cost_var_scaled: float = math.nan  # sample variance of cost_usd * 2**-cost_exp
    cost_exp: int = 0                  # shared by all arms of a dataset

    @property
    def cost_usd(self) -> float:
        return rescale(self.cost_sum_scaled, self.cost_exp)


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
         route: str | None = None, memory_limit: str | None = None) -> Dataset:
    """Read request logs into per-arm figures.

    ``sources``: paths, glob patterns (``'logs/*.jsonl.gz'``) and/or binary
    streams (``-``, ``None`` or empty means ``sys.stdin.buffer``); each may
    be gzip.  ``since``: Unix seconds, an aware datetime or a ``--since``
    string; requests with ``ts`` earlier are filtered out.  ``route``: keep
    only that route.  ``memory_limit``: DuckDB's (e.g. ``"1GB"``); beyond it
    DuckDB spills to a temp directory.  Close the result (or use it as a
    context manager) to free DuckDB and its temp files.
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
        _classify(engine, inputs, since_us, route, ds)
        _count(engine, inputs, ds)
        _per_arm(engine, ds)
    except BaseException:
        ds.close()
        raise
    return ds


def _classify(engine: Engine, inputs: Inputs, since_us: int, route: str | None, ds: Dataset) -> None:
    import duckdb

    def run() -> None:
        scans, params = [], {"since_us": since_us, "route": route}
        for param, files, compression in (("plain", inputs.plain, "none"), ("gz", inputs.gzip, "gzip")):
            if files:
                scans.append(_scan(param, compression))
                params[param] = files  # type: ignore[assignment]
        engine.con.execute("DROP TABLE IF EXISTS lines")
        engine.con.execute(_CLASSIFY.replace("{scans}", " UNION ALL ".join(scans)), params)

    if not inputs.plain and not inputs.gzip:
        raise ReportError("no input files", 1)
    try:
        run()
    except duckdb.IOException:
        # A damaged gzip (truncated rotation, copy cut short) stops DuckDB's
        # whole scan; read the gzip inputs in Python up to the damage instead.
        problems = salvage_gzip(inputs, engine.tmp)
        if not problems:
            raise
        ds.malformed += len(problems)
        ds.lines += len(problems)
        ds.malformed_examples.extend(problems[:_MAX_EXAMPLES])
        run()
    except duckdb.Error as e:
        raise ReportError(f"cannot read the logs: {e}", 1) from None


def _count(engine: Engine, inputs: Inputs, ds: Dataset) -> None:
    con = engine.con
    counts = dict(con.execute("SELECT kind, count(*) FROM lines GROUP BY kind").fetchall())
    ds.lines += sum(counts.values())
    ds.malformed += counts.get(1, 0)
    ds.skipped += counts.get(2, 0)
    ds.filtered += counts.get(3, 0)
    ds.unassigned += counts.get(4, 0)
    room = _MAX_EXAMPLES - len(ds.malformed_examples)
    if counts.get(1) and room > 0:
        # rowid follows the scan order (DuckDB preserves insertion order), so
        # the line number is the row's place in its file, blank lines not counted
        rows = con.execute("""
            SELECT file, rowid - (SELECT min(rowid) FROM lines l2 WHERE l2.file = l.file) + 1, problem
            FROM lines l WHERE kind = 1 ORDER BY rowid LIMIT $room""", {"room": room}).fetchall()
        ds.malformed_examples.extend(f"{inputs.display.get(f, f)}:{n}: {why}" for f, n, why in rows)


def _per_arm(engine: Engine, ds: Dataset) -> None:
    con = engine.con
    max_cost = 0.0
    for (arm, n, ok, fallbacks, first, last, pt_hi, pt_lo, ct_hi, ct_lo, pct_hi, pct_lo,
         priced, arm_max_cost) in con.execute(_PER_ARM).fetchall():
        ds.arms[arm] = ArmData(
            name=arm, requests=n, successes=ok, fallbacks=fallbacks, first_us=first, last_us=last,
            prompt_tokens=int(pt_hi or 0) * _TWO64 + int(pt_lo or 0),
            completion_tokens=int(ct_hi or 0) * _TWO64 + int(ct_lo or 0),
            priced_completion_tokens=int(pct_hi or 0) * _TWO64 + int(pct_lo or 0),
            priced=priced)
        max_cost = max(max_cost, arm_max_cost or 0.0)
    if not ds.arms:
        return
    for arm, outcome, n in con.execute(
            "SELECT arm, outcome, count(*) FROM lines WHERE kind = 0 GROUP BY ALL").fetchall():
        ds.arms[arm].outcomes[outcome] = n
    exp = math.frexp(max_cost)[1] if max_cost > 0 else 0
    for arm, total, var in con.execute(_COST, {"scale": math.ldexp(1.0, -exp)}).fetchall():
        a = ds.arms[arm]
        a.cost_sum_scaled, a.cost_var_scaled = total, (var if var is not None else math.nan)
    for a in ds.arms.values():
        a.cost_exp = exp
    hist = con.execute(_HISTOGRAMS).fetchnumpy()
    if len(hist["arm"]):
        _split_histograms(ds, hist)


def _split_histograms(ds: Dataset, hist: dict[str, Any]) -> None:
    """Cut the (metric, arm)-ordered histogram rows into one Sample each."""
    keys = list(zip(hist["metric"].tolist(), hist["arm"].tolist()))
    starts = [i for i in range(len(keys)) if i == 0 or keys[i] != keys[i - 1]]
    for lo, hi in zip(starts, starts[1:] + [len(keys)]):
        metric, arm = keys[lo]
        sample = Sample(hist["v"][lo:hi], hist["c"][lo:hi])
        if metric == 0:
            ds.arms[arm].ttft = sample
        else:
            ds.arms[arm].latency = sample
