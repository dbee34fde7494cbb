"""``gateway report`` -- the A/B (canary) report over request logs.

Reads request logs in schema v1 (docs/log-schema.md), one JSON object per line,
plain or gzip (detected by magic bytes), from files or stdin, and compares the
arms of a route: time to first token, latency, error rate and cost.

Usage::

    gateway report LOGFILE... [--since TIME] [--route NAME] [--control ARM]
                   [--format text|json] [--html FILE]

Definitions (also written into the JSON report under ``definitions``):

* Request lines: ``"event": "request"`` and ``"schema": 1``.  Other events and
  other schema versions are *skipped*.  Lines that are not JSON, not an
  object, lack a field the report needs or hold a wrong type are *malformed*:
  counted, the first few quoted, never fatal.  Requests with ``arm: null``
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
  of the priced requests x 1e6.  Totals are sums over priced requests.
* TTFT / latency comparison (arm vs control): difference of medians
  (arm - control) with a 95 % CI from the Bonett & Price (2002) standard
  error of a sample median (distribution-free, from two order statistics of
  each sorted sample; deterministic, O(1) after the sort, so it stays exact
  on millions of lines).  Significance: two-sided Mann-Whitney U test, normal
  approximation with tie correction and continuity correction.  The verdict
  "significant" comes from the U test; the CI sizes the median shift (the two
  can disagree when distributions differ in shape but not in median).
* error rate comparison: two-sided two-proportion z-test (pooled) for the
  p-value, Newcombe's hybrid score interval for the difference.
* cost comparison: ratio of mean cost per priced request; significance from a
  Welch (unequal variance) z-test on the per-request cost.
* No correction for multiple comparisons is applied.

Only the standard library and orjson are needed; ``--html`` additionally
needs matplotlib (``pip install 'llm-gateway[report]'``).
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import gzip
import html as _html
import io
import math
import operator
import os
import re
import sys
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import accumulate, repeat
from statistics import NormalDist
from typing import IO, Any, Iterable

import orjson

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
    "wilson_interval",
    "write_html",
]

ALPHA = 0.05
_N = NormalDist()
Z95 = _N.inv_cdf(1 - ALPHA / 2)  # 1.959963984540054
INSTALL_HINT = "pip install 'llm-gateway[report]'"

DEFINITIONS = {
    "success": "outcome == 'ok'; every other outcome counts as an error",
    "error_rate_ci95": "Wilson score interval",
    "ttft": "requests with a non-null ttft_ms, any outcome",
    "latency": "latency_ms of ok requests only",
    "percentile": "linear interpolation between closest ranks (Hyndman-Fan type 7, numpy default)",
    "cost_per_request": "mean cost_usd over requests with a price (non-null cost_usd)",
    "cost_per_1m_completion_tokens": "total cost / completion tokens of priced requests * 1e6",
    "median_diff_ci95": "arm - control; Bonett-Price (2002) order-statistic standard errors, normal CI",
    "shift_p_value": "two-sided Mann-Whitney U, normal approximation, tie and continuity corrected",
    "error_p_value": "two-sided pooled two-proportion z-test; difference CI: Newcombe hybrid score",
    "cost_p_value": "two-sided Welch z-test on per-request cost of priced requests",
    "significance": "p < 0.05 (95 %), no multiple-comparison correction",
}


class ReportError(Exception):
    """A user-facing error; ``main`` prints it and exits with ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------
# statistics (pure functions)
# ---------------------------------------------------------------------------


def percentile(sorted_xs: Any, p: float) -> float | None:
    """The p-th percentile (0..100) of an ascending sequence, type-7 linear
    interpolation (numpy's default).  ``None`` for an empty sequence."""
    n = len(sorted_xs)
    if n == 0:
        return None
    if not 0 <= p <= 100:
        raise ValueError("percentile must be within 0..100")
    h = (n - 1) * p / 100.0
    lo = math.floor(h)
    if lo >= n - 1:
        return float(sorted_xs[n - 1])
    frac = h - lo
    a = sorted_xs[lo]
    return float(a + frac * (sorted_xs[lo + 1] - a))


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion; ``None`` if n == 0."""
    if n <= 0:
        return None
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def _two_sided_p(z: float) -> float:
    return min(1.0, 2.0 * _N.cdf(-abs(z)))


def two_proportion_z_test(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Pooled two-proportion z-test of x1/n1 vs x2/n2: ``(z, two-sided p)``."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError("both samples need at least one observation")
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / se
    return z, _two_sided_p(z)


def newcombe_diff_interval(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """95 % CI of p1 - p2 by Newcombe's hybrid score method (method 10)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1)  # type: ignore[misc]
    l2, u2 = wilson_interval(x2, n2)  # type: ignore[misc]
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def mann_whitney_u(a: Iterable[float], b: Iterable[float]) -> tuple[float, float, float]:
    """Two-sided Mann-Whitney U test of samples a and b.

    Returns ``(U_a, p, prob)`` where U_a counts pairs with a > b (ties 1/2),
    p uses the normal approximation with tie and continuity correction, and
    prob = P(a < b) + P(a = b)/2 = 1 - U_a/(n_a n_b).

    Mid-ranks from value counts (Counter per sample), then one walk over
    the distinct values in order with cumulative counts -- all in C-level
    iterators (map/accumulate), exact integer arithmetic.  The ordered
    distinct values come from sorting the (few, at the log's 0.1 ms
    resolution) distinct values, or -- when most values are distinct -- from
    merging the two samples (timsort merges sorted runs in O(n)) and
    de-duplicating in order.
    """
    if not isinstance(a, list):
        a = list(a)
    if not isinstance(b, list):
        b = list(b)
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        raise ValueError("both samples need at least one observation")
    ca = Counter(a)
    cb = Counter(b)
    if len(ca) + len(cb) < (n1 + n2) // 2:
        keys = sorted(ca.keys() | cb.keys())
    else:
        keys = list(dict.fromkeys(sorted(sorted(a) + sorted(b))))
    k = len(keys)
    ka = list(map(ca.get, keys, repeat(0, k)))
    t = list(map(operator.add, ka, map(cb.get, keys, repeat(0, k))))
    # twice the mid-rank of a value = 2 * (count below) + t + 1 = 2 * cum - t + 1
    twice_mid = map(operator.sub, map(operator.mul, accumulate(t), repeat(2, k)),
                    map(operator.sub, t, repeat(1, k)))
    r1x2 = sum(map(operator.mul, ka, twice_mid))
    n = n1 + n2
    ties = sum(map(pow, t, repeat(3, k))) - n
    u1 = r1x2 / 2 - n1 * (n1 + 1) / 2
    mu = n1 * n2 / 2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    prob = 1 - u1 / (n1 * n2)
    if var <= 0:
        return u1, 1.0, prob
    z = max(0.0, abs(u1 - mu) - 0.5) / math.sqrt(var)
    return u1, _two_sided_p(z), prob


def _binom_half_cdf(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) <= k); exact up to n = 1000, normal approx beyond."""
    if k < 0:
        return 0.0
    if n <= 1000:
        return sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)
    return _N.cdf((k + 0.5 - n / 2) / (math.sqrt(n) / 2))


def median_se(sorted_xs: Any) -> float | None:
    """Bonett & Price (2002) standard error of the sample median of an
    ascending sample: ((x_(n-c+1) - x_(c)) / (2 z_c))^2 with
    c = round((n+1)/2 - sqrt(n)) and z_c the normal quantile matching the
    exact binomial coverage of [x_(c), x_(n-c+1)].  ``None`` if n < 5."""
    n = len(sorted_xs)
    if n < 5:
        return None
    c = max(1, round((n + 1) / 2 - math.sqrt(n)))
    tail = _binom_half_cdf(n, c - 1)
    if not 0 < tail < 0.5:
        return None
    z = _N.inv_cdf(1 - tail)
    return (sorted_xs[n - c] - sorted_xs[c - 1]) / (2 * z)


def median_diff_ci(sorted_a: Any, sorted_b: Any) -> tuple[float, float, float] | None:
    """median(a) - median(b) with its 95 % CI: ``(diff, low, high)``."""
    se_a, se_b = median_se(sorted_a), median_se(sorted_b)
    if se_a is None or se_b is None:
        return None
    d = percentile(sorted_a, 50) - percentile(sorted_b, 50)  # type: ignore[operator]
    half = Z95 * math.sqrt(se_a * se_a + se_b * se_b)
    return d, d - half, d + half


def _mean_var(xs: Any) -> tuple[float, float]:
    """Mean and sample variance; exact-rounded sums (fsum) keep the
    sum-of-squares form accurate enough for cost data."""
    n = len(xs)
    total = math.fsum(xs)
    m = total / n
    if n < 2:
        return m, 0.0
    ss = math.fsum(map(operator.mul, xs, xs))
    return m, max(0.0, (ss - total * m) / (n - 1))


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_REL_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)


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
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.timestamp()


def _fmt_ts(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    t = _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_UTC = _dt.timezone.utc


class _TsParser:
    """RFC 3339 -> Unix seconds.

    Fast path for the gateway's own ``YYYY-MM-DDTHH:MM:SS[.fff]Z``: it
    remembers the last whole-second prefix (``prefix``/``base``; logs are
    chronological) and fills ``fracs`` with validated suffixes (``.123Z`` ->
    0.123), so the hot loop can do ``base + fracs[ts[19:]]`` inline when
    ``ts[:19] == prefix``, without calling this at all.
    """

    __slots__ = ("prefix", "base", "day", "day_base", "fracs")

    def __init__(self) -> None:
        self.prefix = ""
        self.base = 0.0
        self.day = ""
        self.day_base = 0.0
        self.fracs: dict[str, float] = {"Z": 0.0, "z": 0.0}

    def __call__(self, ts: str) -> float:
        if len(ts) >= 20 and ts[-1] in "Zz" and ts[10] in "Tt ":
            prefix = ts[:19]
            if prefix == self.prefix:
                base = self.base
            else:
                day = ts[:10]
                if day != self.day:
                    t = _dt.datetime.fromisoformat(day)
                    self.day_base = t.replace(tzinfo=_UTC).timestamp()
                    self.day = day
                hms = ts[11:13] + ts[14:16] + ts[17:19]
                if ts[13] != ":" or ts[16] != ":" or not hms.isdigit() or not hms.isascii():
                    raise ValueError("bad time of day")
                h, mi, s = int(hms[:2]), int(hms[2:4]), int(hms[4:])
                if h > 23 or mi > 59 or s > 60:
                    raise ValueError("bad time of day")
                base = self.day_base + (h * 3600 + mi * 60 + s)
                self.prefix, self.base = prefix, base
            suffix = ts[19:]
            frac = self.fracs.get(suffix)
            if frac is None:
                digits = suffix[1:-1]
                if suffix[0] != "." or not digits.isdigit() or not digits.isascii():
                    raise ValueError("bad fraction")
                frac = float("0." + digits)
                if len(self.fracs) < 20000:
                    self.fracs[suffix] = frac
            return base + frac
        t = _dt.datetime.fromisoformat(ts)
        if t.tzinfo is None:
            raise ValueError("timestamp without offset")
        return t.timestamp()


class ArmData:
    """Raw per-arm samples, in file order."""

    __slots__ = ("name", "ts", "err", "ttft", "lat_ok", "ts_ok", "cost", "outcomes",
                 "_pt", "_ct", "_pct", "_fb")

    def __init__(self, name: str) -> None:
        self.name = name
        self.ts = array("d")         # arrival time (Unix s) of every request
        self.err = bytearray()       # 1 where outcome != ok, aligned with ts
        self.ttft = array("d")       # ttft_ms where not null
        self.lat_ok = array("d")     # latency_ms of ok requests
        self.ts_ok = array("d")      # arrival time aligned with lat_ok
        self.cost = array("d")       # cost_usd where not null
        self.outcomes: dict[str, int] = {}
        self._pt = array("q")        # prompt_tokens where non-zero
        self._ct = array("q")        # completion_tokens where non-zero
        self._pct = array("q")       # completion_tokens of priced requests
        self._fb = array("d")        # arrival time of requests with fallback_used

    def sink(self) -> tuple:
        """Bound appenders for the loader's hot loop."""
        return (self.ts.append, self.err.append, self.lat_ok.append, self.ts_ok.append,
                self.ttft.append, self.cost.append, self.outcomes, self._pt.append,
                self._ct.append, self._pct.append, self._fb.append)

    @property
    def requests(self) -> int:
        return len(self.ts)

    @property
    def prompt_tokens(self) -> int:
        return sum(self._pt)

    @property
    def completion_tokens(self) -> int:
        return sum(self._ct)

    @property
    def priced_completion_tokens(self) -> int:
        return sum(self._pct)

    @property
    def fallbacks(self) -> int:
        return len(self._fb)


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

    @property
    def requests(self) -> int:
        return sum(a.requests for a in self.arms.values())


_MAX_EXAMPLES = 5
_NUM = (int, float)
_REQUIRED = ("ts", "route", "arm", "outcome", "ttft_ms", "latency_ms",
             "prompt_tokens", "completion_tokens", "cost_usd", "fallback_used")


def _why_malformed(d: dict, parse_ts: _TsParser) -> str:
    """Slow path: say which field is wrong (only called for bad lines)."""
    for k in _REQUIRED:
        if k not in d:
            return f"missing field {k!r}"
    checks = (
        ("ts", lambda v: type(v) is str),
        ("outcome", lambda v: type(v) is str),
        ("route", lambda v: v is None or type(v) is str),
        ("arm", lambda v: v is None or type(v) is str),
        ("fallback_used", lambda v: type(v) is bool),
        ("ttft_ms", lambda v: v is None or (type(v) in _NUM and v >= 0)),
        ("latency_ms", lambda v: v is None or (type(v) in _NUM and v >= 0)),
        ("cost_usd", lambda v: v is None or (type(v) in _NUM and v >= 0)),
        ("prompt_tokens", lambda v: v is None or (type(v) is int and v >= 0)),
        ("completion_tokens", lambda v: v is None or (type(v) is int and v >= 0)),
    )
    for k, ok in checks:
        if not ok(d[k]):
            return f"bad value for {k!r}: {d[k]!r:.40}"
    try:
        parse_ts(d["ts"])
    except (ValueError, IndexError):
        return f"bad timestamp {d['ts']!r:.40}"
    return "invalid"


def _open_stream(src: Any) -> tuple[IO[bytes], str, Any]:
    """(binary line stream, display name, thing to close or None)."""
    if isinstance(src, (str, bytes)) or hasattr(src, "__fspath__"):
        name = str(src)
        try:
            f = open(src, "rb")
        except OSError as e:
            raise ReportError(f"cannot open {name}: {e.strerror or e}", 1) from None
        closer: Any = f
    else:
        f = src
        name = getattr(src, "name", "<stream>")
        if not isinstance(name, str):
            name = "<stream>"
        closer = None
    if not hasattr(f, "peek"):
        f = io.BufferedReader(f)  # type: ignore[arg-type]
    if f.peek(2)[:2] == b"\x1f\x8b":
        f = gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[assignment]
    return f, name, closer


def load(sources: Iterable[Any] | Any = None, since: float | str | _dt.datetime | None = None,
         route: str | None = None) -> Dataset:
    """Read request logs into per-arm samples.

    ``sources``: paths and/or binary streams (``-``, ``None`` or empty means
    ``sys.stdin.buffer``); each may be gzip.  ``since``: Unix seconds, an
    aware datetime or a ``--since`` string; requests with ``ts`` earlier are
    filtered out.  ``route``: keep only that route.
    """
    if sources is None or isinstance(sources, (str, bytes)) or hasattr(sources, "read") \
            or hasattr(sources, "__fspath__"):
        sources = [sources] if sources is not None else []
    sources = list(sources) or ["-"]
    if isinstance(since, str):
        since = parse_since(since)
    elif isinstance(since, _dt.datetime):
        since = (since if since.tzinfo else since.replace(tzinfo=_UTC)).timestamp()
    ds = Dataset(since=since, route=route)
    for src in sources:
        if src == "-":
            src = sys.stdin.buffer
        stream, name, closer = _open_stream(src)
        ds.sources.append(name)
        try:
            _load_stream(ds, stream, name)
        finally:
            if closer is not None:
                closer.close()
    return ds


def _load_stream(ds: Dataset, stream: IO[bytes], name: str) -> None:  # noqa: C901
    # The hot loop: everything it touches is a local.
    loads = orjson.loads
    JSONDecodeError = orjson.JSONDecodeError
    NUM = _NUM
    arms = ds.arms
    since = ds.since
    route_want = ds.route
    parse_ts = _TsParser()
    fracs = parse_ts.fracs
    last_prefix = ""
    last_base = 0.0
    examples = ds.malformed_examples
    lines = malformed = skipped = filtered = unassigned = 0
    lineno = 0
    sinks: dict[str, tuple] = {}

    def bad(lineno: int, reason: str) -> None:
        if len(examples) < _MAX_EXAMPLES:
            examples.append(f"{name}:{lineno}: {reason}")

    it = iter(stream)
    while True:
        try:
            for line in it:
                lineno += 1
                try:
                    d = loads(line)
                except JSONDecodeError:
                    if not line.strip():
                        continue
                    lines += 1
                    malformed += 1
                    bad(lineno, "not valid JSON")
                    continue
                lines += 1
                if type(d) is not dict:
                    malformed += 1
                    bad(lineno, f"not a JSON object ({type(d).__name__})")
                    continue
                ev = d.get("event")
                if ev != "request":
                    if type(ev) is str:
                        skipped += 1
                    else:
                        malformed += 1
                        bad(lineno, "missing or non-string 'event'")
                    continue
                schema = d.get("schema")
                if schema != 1 or type(schema) is not int:
                    if type(schema) is int:
                        skipped += 1
                    else:
                        malformed += 1
                        bad(lineno, "missing or non-integer 'schema'")
                    continue
                try:
                    ts = d["ts"]
                    rt = d["route"]
                    arm = d["arm"]
                    outcome = d["outcome"]
                    ttft = d["ttft_ms"]
                    lat = d["latency_ms"]
                    pt = d["prompt_tokens"]
                    ct = d["completion_tokens"]
                    cost = d["cost_usd"]
                    fb = d["fallback_used"]
                    if (type(outcome) is not str or type(fb) is not bool
                            or (rt is not None and type(rt) is not str)
                            or (arm is not None and type(arm) is not str)
                            or (ttft is not None and (type(ttft) not in NUM or ttft < 0))
                            or (lat is not None and (type(lat) not in NUM or lat < 0))
                            or (cost is not None and (type(cost) not in NUM or cost < 0))
                            or (pt is not None and (type(pt) is not int or pt < 0))
                            or (ct is not None and (type(ct) is not int or ct < 0))):
                        raise TypeError
                    frac = fracs.get(ts[19:])
                    if frac is not None and ts[:19] == last_prefix:
                        t = last_base + frac
                    else:
                        t = parse_ts(ts)
                        last_prefix, last_base = parse_ts.prefix, parse_ts.base
                except (KeyError, TypeError, ValueError, IndexError):
                    malformed += 1
                    if len(examples) < _MAX_EXAMPLES:
                        bad(lineno, _why_malformed(d, _TsParser()))
                    continue
                if (since is not None and t < since) or (route_want is not None and rt != route_want):
                    filtered += 1
                    continue
                if arm is None:
                    unassigned += 1
                    continue
                sink = sinks.get(arm)
                if sink is None:
                    a = arms.get(arm)
                    if a is None:
                        a = arms[arm] = ArmData(arm)
                    sink = sinks[arm] = a.sink()
                (ts_add, err_add, lat_add, tsok_add, ttft_add, cost_add, oc,
                 pt_add, ct_add, pct_add, fb_add) = sink
                ts_add(t)
                oc[outcome] = oc.get(outcome, 0) + 1
                if outcome == "ok":
                    err_add(0)
                    if lat is not None:
                        lat_add(lat)
                        tsok_add(t)
                else:
                    err_add(1)
                if ttft is not None:
                    ttft_add(ttft)
                if pt:
                    pt_add(pt)
                if ct:
                    ct_add(ct)
                if cost is not None:
                    cost_add(cost)
                    if ct:
                        pct_add(ct)
                if fb:
                    fb_add(t)
            break
        except (EOFError, gzip.BadGzipFile, OSError) as e:
            # truncated or corrupt gzip: keep what was read, count it once
            malformed += 1
            bad(lineno, f"unreadable input after this line ({type(e).__name__}: {e})")
            break
    ds.lines += lines
    ds.malformed += malformed
    ds.skipped += skipped
    ds.filtered += filtered
    ds.unassigned += unassigned


# ---------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------


@dataclass
class ArmStats:
    arm: str
    requests: int
    successes: int
    success_rate: float | None
    error_rate: float | None
    error_rate_ci95: tuple[float, float] | None
    outcomes: dict[str, int]
    ttft_n: int
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    ttft_p99_ms: float | None
    latency_n: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    latency_mean_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    priced_requests: int
    unpriced_requests: int
    cost_usd: float
    cost_per_request_usd: float | None
    cost_per_1k_requests_usd: float | None
    cost_per_1m_completion_tokens_usd: float | None
    fallbacks: int
    fallback_share: float | None
    ts_first: str | None
    ts_last: str | None


@dataclass
class ShiftTest:
    """Arm vs control for a duration metric (TTFT or latency)."""
    metric: str
    n_arm: int
    n_control: int
    median_arm_ms: float | None = None
    median_control_ms: float | None = None
    median_diff_ms: float | None = None      # arm - control
    median_diff_rel: float | None = None     # (arm - control) / control
    median_diff_ci95_ms: tuple[float, float] | None = None
    mann_whitney_u: float | None = None
    p_value: float | None = None
    prob_arm_faster: float | None = None     # P(arm < control) + P(tie)/2
    significant: bool | None = None
    faster: str | None = None                # arm name, by median (None: tie / n/a)


@dataclass
class PropTest:
    errors_arm: int
    n_arm: int
    errors_control: int
    n_control: int
    error_rate_arm: float | None = None
    error_rate_control: float | None = None
    diff: float | None = None                # arm - control
    diff_ci95: tuple[float, float] | None = None
    z: float | None = None
    p_value: float | None = None
    significant: bool | None = None
    more_reliable: str | None = None


@dataclass
class CostTest:
    n_arm: int
    n_control: int
    cost_per_request_arm_usd: float | None = None
    cost_per_request_control_usd: float | None = None
    ratio: float | None = None               # arm / control
    p_value: float | None = None
    significant: bool | None = None
    cheaper: str | None = None


@dataclass
class Comparison:
    arm: str
    control: str
    ttft: ShiftTest
    latency: ShiftTest
    errors: PropTest
    cost: CostTest
    verdicts: list[str]


@dataclass
class Report:
    meta: dict[str, Any]
    control: str | None
    arms: dict[str, ArmStats]
    comparisons: list[Comparison]
    warnings: list[str]
    definitions: dict[str, str] = field(default_factory=lambda: dict(DEFINITIONS))


def _arm_stats(a: ArmData, ttft_sorted: list[float], lat_sorted: list[float]) -> ArmStats:
    n = a.requests
    ok = a.outcomes.get("ok", 0)
    errors = n - ok
    priced = len(a.cost)
    total_cost = math.fsum(a.cost)
    cpr = total_cost / priced if priced else None
    return ArmStats(
        arm=a.name,
        requests=n,
        successes=ok,
        success_rate=ok / n if n else None,
        error_rate=errors / n if n else None,
        error_rate_ci95=wilson_interval(errors, n),
        outcomes=dict(sorted(a.outcomes.items(), key=lambda kv: (kv[0] != "ok", -kv[1], kv[0]))),
        ttft_n=len(ttft_sorted),
        ttft_p50_ms=percentile(ttft_sorted, 50),
        ttft_p95_ms=percentile(ttft_sorted, 95),
        ttft_p99_ms=percentile(ttft_sorted, 99),
        latency_n=len(lat_sorted),
        latency_p50_ms=percentile(lat_sorted, 50),
        latency_p95_ms=percentile(lat_sorted, 95),
        latency_p99_ms=percentile(lat_sorted, 99),
        latency_mean_ms=sum(lat_sorted) / len(lat_sorted) if lat_sorted else None,
        prompt_tokens=a.prompt_tokens,
        completion_tokens=a.completion_tokens,
        priced_requests=priced,
        unpriced_requests=n - priced,
        cost_usd=total_cost,
        cost_per_request_usd=cpr,
        cost_per_1k_requests_usd=cpr * 1000 if cpr is not None else None,
        cost_per_1m_completion_tokens_usd=(total_cost / a.priced_completion_tokens * 1e6
                                           if a.priced_completion_tokens else None),
        fallbacks=a.fallbacks,
        fallback_share=a.fallbacks / n if n else None,
        ts_first=_fmt_ts(min(a.ts)) if n else None,
        ts_last=_fmt_ts(max(a.ts)) if n else None,
    )


def _shift_test(metric: str, arm: str, control: str, xs: list[float], ys: list[float],
                min_n: int = 5) -> ShiftTest:
    st = ShiftTest(metric=metric, n_arm=len(xs), n_control=len(ys))
    if not xs or not ys:
        return st
    st.median_arm_ms = percentile(xs, 50)
    st.median_control_ms = percentile(ys, 50)
    st.median_diff_ms = st.median_arm_ms - st.median_control_ms  # type: ignore[operator]
    if st.median_control_ms:
        st.median_diff_rel = st.median_diff_ms / st.median_control_ms
    if len(xs) < min_n or len(ys) < min_n:
        return st
    ci = median_diff_ci(xs, ys)
    if ci is not None:
        st.median_diff_ci95_ms = (ci[1], ci[2])
    u, p, prob = mann_whitney_u(xs, ys)
    st.mann_whitney_u, st.p_value, st.prob_arm_faster = u, p, prob
    st.significant = p < ALPHA
    if st.median_diff_ms < 0 or (st.median_diff_ms == 0 and prob > 0.5):
        st.faster = arm
    elif st.median_diff_ms > 0 or (st.median_diff_ms == 0 and prob < 0.5):
        st.faster = control
    return st


def _prop_test(arm: str, control: str, a: ArmStats, c: ArmStats) -> PropTest:
    ea, ec = a.requests - a.successes, c.requests - c.successes
    pt = PropTest(errors_arm=ea, n_arm=a.requests, errors_control=ec, n_control=c.requests)
    if not a.requests or not c.requests:
        return pt
    pt.error_rate_arm, pt.error_rate_control = ea / a.requests, ec / c.requests
    pt.diff = pt.error_rate_arm - pt.error_rate_control
    pt.diff_ci95 = newcombe_diff_interval(ea, a.requests, ec, c.requests)
    pt.z, pt.p_value = two_proportion_z_test(ea, a.requests, ec, c.requests)
    pt.significant = pt.p_value < ALPHA
    if pt.diff < 0:
        pt.more_reliable = arm
    elif pt.diff > 0:
        pt.more_reliable = control
    return pt


def _cost_test(arm: str, control: str, xa: ArmData, xc: ArmData) -> CostTest:
    ct = CostTest(n_arm=len(xa.cost), n_control=len(xc.cost))
    if not xa.cost or not xc.cost:
        return ct
    ma, va = _mean_var(xa.cost)
    mc, vc = _mean_var(xc.cost)
    ct.cost_per_request_arm_usd, ct.cost_per_request_control_usd = ma, mc
    if mc > 0:
        ct.ratio = ma / mc
    if ma < mc:
        ct.cheaper = arm
    elif ma > mc:
        ct.cheaper = control
    if len(xa.cost) >= 2 and len(xc.cost) >= 2:
        se = math.sqrt(va / len(xa.cost) + vc / len(xc.cost))
        if se > 0:
            ct.p_value = _two_sided_p((ma - mc) / se)
        else:
            ct.p_value = 1.0 if ma == mc else 0.0
        ct.significant = ct.p_value < ALPHA
    return ct


def _p_str(p: float | None) -> str:
    if p is None:
        return "p n/a"
    if p < 0.0001:
        return "p<0.0001"
    return f"p={p:.4f}" if p < 0.01 else f"p={p:.3f}"


def _sig_str(sig: bool | None, p: float | None) -> str:
    if sig is None:
        return "significance n/a (too few samples)"
    return (f"significant at 95% ({_p_str(p)})" if sig
            else f"NOT significant at 95% ({_p_str(p)})")


def _shift_verdict(st: ShiftTest, arm: str, control: str, what: str) -> str:
    if st.median_diff_ms is None:
        return f"{what}: no samples in {arm if not st.n_arm else control}, no comparison"
    rel = f" ({st.median_diff_rel:+.1%})" if st.median_diff_rel is not None else ""
    if st.faster is None:
        head = f"{what}: {arm} and {control} have the same median"
    else:
        slower = control if st.faster == arm else arm
        head = (f"{what}: {st.faster} is faster than {slower} "
                f"(median {arm} vs {control}: {st.median_diff_ms:+.1f} ms{rel})")
    return f"{head}; {_sig_str(st.significant, st.p_value)}"


def _verdicts(cmp_: Comparison) -> list[str]:
    arm, control = cmp_.arm, cmp_.control
    out = [
        _shift_verdict(cmp_.ttft, arm, control, "time to first token"),
        _shift_verdict(cmp_.latency, arm, control, "latency"),
    ]
    e = cmp_.errors
    if e.diff is None:
        out.append("reliability: no requests, no comparison")
    else:
        if e.more_reliable is None:
            head = f"reliability: {arm} and {control} have the same error rate ({e.error_rate_arm:.2%})"
        else:
            other = control if e.more_reliable == arm else arm
            head = (f"reliability: {e.more_reliable} is more reliable than {other} "
                    f"(error rate {e.error_rate_arm:.2%} vs {e.error_rate_control:.2%}, "
                    f"{e.diff * 100:+.2f} pt)")
        out.append(f"{head}; {_sig_str(e.significant, e.p_value)}")
    c = cmp_.cost
    if c.cost_per_request_arm_usd is None:
        missing = arm if not c.n_arm else control
        out.append(f"cost: no priced requests in {missing}, no comparison")
    else:
        if c.cheaper is None:
            head = f"cost: {arm} and {control} cost the same per request"
        else:
            other = control if c.cheaper == arm else arm
            ratio = f"{c.ratio:.2f}x" if c.ratio is not None else "n/a"
            head = (f"cost: {c.cheaper} is cheaper than {other} "
                    f"(cost per request {arm}/{control} = {ratio})")
        out.append(f"{head}; {_sig_str(c.significant, c.p_value)}")
    return out


def pick_control(arms: dict[str, Any], control: str | None = None) -> str | None:
    """``control`` if given (must exist), else the arm named "control", else
    the arm with most requests (ties: by name)."""
    if control is not None:
        if control not in arms:
            known = ", ".join(sorted(arms)) or "none"
            raise ReportError(f"--control: no arm named {control!r} (arms: {known})")
        return control
    if not arms:
        return None
    if "control" in arms:
        return "control"
    return min(arms, key=lambda k: (-arms[k].requests, k))


def summarize(ds: Dataset, control: str | None = None) -> Report:
    """Per-arm statistics and every arm vs the control arm."""
    ctrl = pick_control(ds.arms, control)
    order = sorted(ds.arms, key=lambda k: (k != ctrl, -ds.arms[k].requests, k))
    ttft_sorted = {k: sorted(ds.arms[k].ttft) for k in order}
    lat_sorted = {k: sorted(ds.arms[k].lat_ok) for k in order}
    arms = {k: _arm_stats(ds.arms[k], ttft_sorted[k], lat_sorted[k]) for k in order}
    warnings: list[str] = []
    comparisons = []
    for k in order:
        if k == ctrl:
            continue
        cmp_ = Comparison(
            arm=k, control=ctrl,  # type: ignore[arg-type]
            ttft=_shift_test("ttft_ms", k, ctrl, ttft_sorted[k], ttft_sorted[ctrl]),  # type: ignore[index]
            latency=_shift_test("latency_ms", k, ctrl, lat_sorted[k], lat_sorted[ctrl]),  # type: ignore[index]
            errors=_prop_test(k, ctrl, arms[k], arms[ctrl]),  # type: ignore[index]
            cost=_cost_test(k, ctrl, ds.arms[k], ds.arms[ctrl]),  # type: ignore[index]
            verdicts=[],
        )
        cmp_.verdicts = _verdicts(cmp_)
        comparisons.append(cmp_)
    for k, s in arms.items():
        if s.requests < 30:
            warnings.append(f"arm {k!r}: only {s.requests} requests; tests are unreliable")
        errors = s.requests - s.successes
        if 0 < s.requests and (errors < 5 or s.successes < 5):
            warnings.append(f"arm {k!r}: {errors} errors / {s.successes} successes; "
                            "the normal approximation of the error-rate test is rough")
        if s.unpriced_requests:
            warnings.append(f"arm {k!r}: {s.unpriced_requests} requests without a price "
                            "(cost_usd null); cost figures cover priced requests only")
    if len(arms) < 2 and arms:
        warnings.append("only one arm: nothing to compare")
    if ds.malformed:
        warnings.append(f"{ds.malformed} malformed line(s) ignored")
    if ds.unassigned:
        warnings.append(f"{ds.unassigned} request(s) without an arm (routing failed) not attributed")
    firsts = [s.ts_first for s in arms.values() if s.ts_first]
    lasts = [s.ts_last for s in arms.values() if s.ts_last]
    meta = {
        "generated_at": _fmt_ts(time.time()),
        "sources": list(ds.sources),
        "since": _fmt_ts(ds.since),
        "route": ds.route,
        "lines": ds.lines,
        "requests": ds.requests,
        "malformed": ds.malformed,
        "malformed_examples": list(ds.malformed_examples),
        "skipped": ds.skipped,
        "filtered": ds.filtered,
        "unassigned": ds.unassigned,
        "ts_first": min(firsts) if firsts else None,
        "ts_last": max(lasts) if lasts else None,
    }
    return Report(meta=meta, control=ctrl, arms=arms, comparisons=comparisons, warnings=warnings)


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def _usd(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.2f}" if abs(x) >= 1 else f"${x:.4f}"


def render_text(report: Report) -> str:
    m = report.meta
    out: list[str] = []
    w = out.append
    w("gateway report")
    w(f"  inputs:   {', '.join(m['sources'])}")
    w(f"  period:   {m['ts_first'] or '-'} .. {m['ts_last'] or '-'}")
    w(f"  filters:  route={m['route'] or 'all'}  since={m['since'] or '-'}")
    w(f"  lines:    {m['lines']:,} read, {m['requests']:,} requests counted, "
      f"{m['malformed']:,} malformed, {m['skipped']:,} skipped (other events/schemas), "
      f"{m['filtered']:,} filtered out, {m['unassigned']:,} without arm")
    for ex in m["malformed_examples"]:
        w(f"            malformed: {ex}")
    w(f"  control:  {report.control or '-'}")
    w("")
    if not report.arms:
        w("no request lines matched")
        return "\n".join(out) + "\n"
    names = list(report.arms)
    s = report.arms
    rows: list[tuple[str, list[str]]] = [
        ("requests", [f"{s[k].requests:,}" for k in names]),
        ("successes (ok)", [f"{s[k].successes:,}" for k in names]),
        ("success rate", [_pct(s[k].success_rate) for k in names]),
        ("error rate", [_pct(s[k].error_rate) for k in names]),
        ("  95% CI (Wilson)", [f"{_pct(ci[0])} .. {_pct(ci[1])}" if (ci := s[k].error_rate_ci95) else "-"
                               for k in names]),
        ("TTFT p50 ms", [_ms(s[k].ttft_p50_ms) for k in names]),
        ("TTFT p95 ms", [_ms(s[k].ttft_p95_ms) for k in names]),
        ("TTFT p99 ms", [_ms(s[k].ttft_p99_ms) for k in names]),
        ("  TTFT samples", [f"{s[k].ttft_n:,}" for k in names]),
        ("latency p50 ms (ok)", [_ms(s[k].latency_p50_ms) for k in names]),
        ("latency p95 ms (ok)", [_ms(s[k].latency_p95_ms) for k in names]),
        ("latency p99 ms (ok)", [_ms(s[k].latency_p99_ms) for k in names]),
        ("latency mean ms (ok)", [_ms(s[k].latency_mean_ms) for k in names]),
        ("prompt tokens", [f"{s[k].prompt_tokens:,}" for k in names]),
        ("completion tokens", [f"{s[k].completion_tokens:,}" for k in names]),
        ("cost total", [_usd(s[k].cost_usd) for k in names]),
        ("cost / 1k requests", [_usd(s[k].cost_per_1k_requests_usd) for k in names]),
        ("cost / 1M compl. tokens", [_usd(s[k].cost_per_1m_completion_tokens_usd) for k in names]),
        ("unpriced requests", [f"{s[k].unpriced_requests:,}" for k in names]),
        ("fallback share", [_pct(s[k].fallback_share) for k in names]),
    ]
    outcomes = sorted({o for k in names for o in s[k].outcomes},
                      key=lambda o: (o != "ok", o))
    for o in outcomes:
        rows.append((f"  outcome {o}", [f"{s[k].outcomes.get(o, 0):,}" for k in names]))
    lw = max(len(r[0]) for r in rows) + 2
    cw = [max(len(k) + (10 if k == report.control else 0), *(len(r[1][i]) for r in rows)) + 2
          for i, k in enumerate(names)]
    w("per arm".ljust(lw) + "".join(
        (f"{k} (control)" if k == report.control else k).rjust(cw[i]) for i, k in enumerate(names)))
    for label, vals in rows:
        w(label.ljust(lw) + "".join(v.rjust(cw[i]) for i, v in enumerate(vals)))
    for c in report.comparisons:
        w("")
        w(f"{c.arm} vs {c.control} (control)")
        for st, label in ((c.ttft, "TTFT"), (c.latency, "latency")):
            if st.median_diff_ms is None:
                w(f"  {label:8} median diff: n/a")
                continue
            ci = (f" [95% CI {st.median_diff_ci95_ms[0]:+.1f} .. {st.median_diff_ci95_ms[1]:+.1f}]"
                  if st.median_diff_ci95_ms else "")
            rel = f" ({st.median_diff_rel:+.1%})" if st.median_diff_rel is not None else ""
            prob = (f", P({c.arm} faster)={st.prob_arm_faster:.3f}"
                    if st.prob_arm_faster is not None else "")
            w(f"  {label:8} median diff {st.median_diff_ms:+.1f} ms{rel}{ci}; "
              f"Mann-Whitney {_p_str(st.p_value)}{prob}")
        e = c.errors
        if e.diff is not None:
            ci = f" [95% CI {e.diff_ci95[0] * 100:+.2f} .. {e.diff_ci95[1] * 100:+.2f}]" if e.diff_ci95 else ""
            w(f"  errors   {e.error_rate_arm:.2%} vs {e.error_rate_control:.2%}, "
              f"diff {e.diff * 100:+.2f} pt{ci}; z-test {_p_str(e.p_value)}")
        k = c.cost
        if k.cost_per_request_arm_usd is not None:
            ratio = f"{k.ratio:.3f}x" if k.ratio is not None else "n/a"
            w(f"  cost     per request {k.cost_per_request_arm_usd:.6f} vs "
              f"{k.cost_per_request_control_usd:.6f} USD, ratio {ratio}; Welch {_p_str(k.p_value)}")
        w("  verdict:")
        for v in c.verdicts:
            w(f"    - {v}")
    if report.warnings:
        w("")
        w("warnings:")
        for x in report.warnings:
            w(f"  - {x}")
    w("")
    w("method: percentiles type-7 (linear interpolation); median CI Bonett-Price; "
      "Mann-Whitney U (normal approx., tie-corrected); errors: two-proportion z-test; "
      "cost: Welch z-test; latency over ok requests only; 95% two-sided, no "
      "multiple-comparison correction.")
    return "\n".join(out) + "\n"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def render_json(report: Report) -> bytes:
    """The report as indented JSON (UTF-8 bytes, trailing newline)."""
    doc = {"report": "gateway-ab", "version": 1, **_jsonable(asdict(report))}
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


# ---------------------------------------------------------------------------
# HTML (matplotlib optional)
# ---------------------------------------------------------------------------

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


def _bucketize(ts: Any, values: Any, t0: float, width: int) -> dict[int, list]:
    out: dict[int, list] = {}
    for t, v in zip(ts, values):
        i = int((t - t0) // width)
        lst = out.get(i)
        if lst is None:
            out[i] = [v]
        else:
            lst.append(v)
    return out


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
        xs = sorted(dataset.arms[k].ttft)
        if not xs:
            continue
        qs = [i / 10 for i in range(1001)]
        ax.plot([percentile(xs, q) for q in qs], [q / 100 for q in qs],
                label=f"{k} (n={len(xs):,}, p50={percentile(xs, 50):,.0f} ms)")
        drew = True
    if drew:
        if all(v > 0 for k in names for v in dataset.arms[k].ttft[:1000]):
            ax.set_xscale("log")
        ax.legend(loc="lower right")
    ax.set_xlabel("time to first token (ms)")
    ax.set_ylabel("fraction of requests ≤ x")
    ax.set_title("TTFT distribution per arm (ECDF)")
    ax.grid(True, alpha=0.3)
    images.append(("TTFT distribution", _png_data_uri(fig)))

    # 2. latency p50/p95 per time bucket, 3. error rate per time bucket
    all_ts = [t for k in names for t in (min(dataset.arms[k].ts), max(dataset.arms[k].ts))
              if dataset.arms[k].requests]
    if all_ts:
        t0, t1 = min(all_ts), max(all_ts)
        width = _bucket_width(max(t1 - t0, 1.0))
        to_dt = lambda i: _dt.datetime.fromtimestamp(t0 + (i + 0.5) * width, _UTC)  # noqa: E731
        fig = Figure(figsize=(9, 4.2))
        ax = fig.subplots()
        for idx, k in enumerate(names):
            a = dataset.arms[k]
            buckets = _bucketize(a.ts_ok, a.lat_ok, t0, width)
            keys = sorted(buckets)
            p50 = [(to_dt(i), percentile(sorted(buckets[i]), 50)) for i in keys if len(buckets[i]) >= 5]
            p95 = [(to_dt(i), percentile(sorted(buckets[i]), 95)) for i in keys if len(buckets[i]) >= 20]
            color = f"C{idx}"
            if p50:
                ax.plot(*zip(*p50), color=color, marker=".", label=f"{k} p50")
            if p95:
                ax.plot(*zip(*p95), color=color, linestyle="--", label=f"{k} p95")
        ax.set_ylabel("latency of ok requests (ms)")
        ax.set_xlabel(f"time (UTC), {_duration_words(width)} buckets")
        ax.set_title("Latency over time per arm (p50 solid, p95 dashed)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        fig.autofmt_xdate()
        images.append(("Latency over time", _png_data_uri(fig)))

        fig = Figure(figsize=(9, 3.6))
        ax = fig.subplots()
        for idx, k in enumerate(names):
            a = dataset.arms[k]
            buckets = _bucketize(a.ts, a.err, t0, width)
            pts = [(to_dt(i), 100 * sum(buckets[i]) / len(buckets[i])) for i in sorted(buckets)]
            if pts:
                ax.plot(*zip(*pts), color=f"C{idx}", marker=".", label=k)
        ax.set_ylabel("error rate (%)")
        ax.set_xlabel(f"time (UTC), {_duration_words(width)} buckets")
        ax.set_title("Error rate over time per arm")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        fig.autofmt_xdate()
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


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gateway report",
        description="A/B report over gateway request logs (schema v1): TTFT, latency, "
                    "error rate and cost per arm, each arm against the control arm.")
    p.add_argument("logfiles", nargs="*", metavar="LOGFILE",
                   help="request log, plain or gzip; '-' or none reads stdin")
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
    input, 2 usage error or missing matplotlib)."""
    if argv is None:
        argv = sys.argv[1:]
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help -> 0, bad usage -> 2
        return int(e.code or 0)
    try:
        if args.html:
            _import_matplotlib()  # fail before reading a big log
        since = parse_since(args.since) if args.since else None
        files = args.logfiles or ["-"]
        if files == ["-"] and getattr(sys.stdin, "isatty", lambda: False)():
            raise ReportError("no LOGFILE given and stdin is a terminal (try --help)")
        ds = load(files, since=since, route=args.route)
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
    if not ds.requests:
        print("gateway report: no request lines matched", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
