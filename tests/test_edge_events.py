"""Edge events are throttled (gateway/edge_events.py): a line at once, then one count per interval."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.edge_events import EdgeEvents, Throttle


def test_the_first_event_of_a_burst_is_a_line_at_once() -> None:
    assert Throttle(10).note("bad_http", {"peer": "a"}, now=0.0) == {"peer": "a", "count": 1}


def test_the_rest_of_a_burst_is_one_line_per_interval_with_their_count_and_the_latest_fields() -> None:
    throttle = Throttle(10)
    throttle.note("bad_http", {"peer": "a"}, now=0.0)
    assert [throttle.note("bad_http", {"peer": p}, now=t) for p, t in (("b", 1.0), ("c", 9.0))] == [None, None]
    assert throttle.flush(now=5.0) == []  # the interval is not over
    assert throttle.flush(now=10.0) == [("bad_http", {"peer": "c", "count": 2})]
    throttle.note("bad_http", {"peer": "d"}, now=11.0)  # still busy: counted for the next interval
    assert throttle.flush(now=20.0) == [("bad_http", {"peer": "d", "count": 1})]


def test_a_quiet_interval_ends_the_burst_and_the_next_event_is_a_line_at_once() -> None:
    throttle = Throttle(10)
    throttle.note("read_timeout", {}, now=0.0)
    assert throttle.flush(now=10.0) == [] and throttle.next_due() is None
    assert throttle.note("read_timeout", {}, now=12.0) == {"count": 1}


def test_kinds_are_throttled_apart() -> None:
    throttle = Throttle(10)
    assert throttle.note("bad_http", {}, now=0.0) is not None
    assert throttle.note("connection_cap", {}, now=0.1) is not None


async def test_the_loop_writes_the_interval_lines_and_close_writes_what_is_still_counted() -> None:
    lines: list[tuple[str, Any]] = []
    events = EdgeEvents(lambda kind, fields: lines.append((kind, dict(fields))), interval_s=0.05)
    for peer in ("a", "b", "c"):
        events("connection_cap", peer=peer)
    await asyncio.sleep(0.12)
    events("connection_cap", peer="d")
    events.close()
    assert lines == [("connection_cap", {"peer": "a", "count": 1}), ("connection_cap", {"peer": "c", "count": 2}),
                     ("connection_cap", {"peer": "d", "count": 1})]
