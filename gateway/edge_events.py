"""Edge events in the log, never a flood.

What happens at the connection edge (a connection refused at the cap, a
request that is not HTTP, a head that arrives too slowly) is logged as one
JSON line, but a client can make such events as fast as it can open
sockets. So each kind is throttled: the first event of a burst is logged at
once (`count` 1), the rest are counted, and one line per `interval_s` says
how many there were (the fields of the latest one, with its `count`). A
quiet interval ends the burst: the next event is logged at once again.

`Throttle` decides, without I/O or a clock of its own; `EdgeEvents` runs it
on the event loop and writes the lines.

    >>> t = Throttle(interval_s=10)
    >>> t.note("bad_http", {"peer": "a"}, now=0.0)
    {'peer': 'a', 'count': 1}
    >>> t.note("bad_http", {"peer": "b"}, now=1.0), t.note("bad_http", {"peer": "c"}, now=2.0)
    (None, None)
    >>> t.next_due()
    10.0
    >>> t.flush(now=10.0)
    [('bad_http', {'peer': 'c', 'count': 2})]
    >>> t.flush(now=20.0), t.next_due()   # a quiet interval: the burst is over
    ([], None)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Fields = Mapping[str, Any]


@dataclass(slots=True)
class _Burst:
    until: float  # the end of the current interval
    count: int = 0  # events counted (not yet logged) in it
    latest: Fields = field(default_factory=dict)


class Throttle:
    """At most one line per kind per `interval_s`, with the count of what it stands for."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._bursts: dict[str, _Burst] = {}

    def note(self, kind: str, fields: Fields, now: float) -> dict[str, Any] | None:
        """One event: the line to log now, or None (it is counted for the interval's line)."""
        burst = self._bursts.get(kind)
        if burst is None:
            self._bursts[kind] = _Burst(until=now + self.interval_s)
            return {**fields, "count": 1}
        burst.count += 1
        burst.latest = fields
        return None

    def next_due(self) -> float | None:
        """When `flush` next has something to do, or None while every kind is quiet."""
        return min((burst.until for burst in self._bursts.values()), default=None)

    def flush(self, now: float, *, everything: bool = False) -> list[tuple[str, dict[str, Any]]]:
        """The lines of the intervals that ended by `now` (all of them when `everything`)."""
        lines = []
        for kind, burst in list(self._bursts.items()):
            if not everything and now < burst.until:
                continue
            if burst.count:
                lines.append((kind, {**burst.latest, "count": burst.count}))
            if burst.count and not everything:
                self._bursts[kind] = _Burst(until=now + self.interval_s)  # still busy: keep counting
            else:
                del self._bursts[kind]
        return lines


class EdgeEvents:
    """Edge events of one process, throttled and written by `emit(kind, fields)`."""

    def __init__(self, emit: Callable[[str, Fields], None], interval_s: float = 10.0) -> None:
        self._emit = emit
        self._throttle = Throttle(interval_s)
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, kind: str, **fields: Any) -> None:
        loop = asyncio.get_running_loop()
        line = self._throttle.note(kind, fields, loop.time())
        if line is not None:
            self._emit(kind, line)
        self._schedule(loop)

    def close(self) -> None:
        """Write what is still counted (at shutdown: no count is lost)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for kind, line in self._throttle.flush(0.0, everything=True):
            self._emit(kind, line)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        due = self._throttle.next_due()
        if self._timer is None and due is not None:
            self._timer = loop.call_at(due, self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        for kind, line in self._throttle.flush(loop.time()):
            self._emit(kind, line)
        self._schedule(loop)
