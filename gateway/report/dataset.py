"""Reading request logs (schema v1) into per-arm samples: files or stdin,
plain or gzip, ``--since``/``--route`` filters, malformed lines counted."""

from __future__ import annotations

import datetime as _dt
import gzip
import io
import re
import sys
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from .errors import ReportError

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
        t = t.replace(tzinfo=_dt.UTC)
    return t.timestamp()


_UTC = _dt.UTC


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
