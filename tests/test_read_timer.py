"""gateway/read_timer.py: one timer per stream, never late, never cancelling what it does not own."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp.base_protocol import BaseProtocol

from gateway.read_timer import ReadTimer
from gateway.relay import next_chunk


class Clock:
    """A deadline the test moves, as data moves a stream's deadlines on."""

    def __init__(self, after_s: float) -> None:
        self.at = asyncio.get_running_loop().time() + after_s

    def __call__(self) -> float:
        return self.at


async def test_a_wait_times_out_when_the_deadline_passes() -> None:
    timer = ReadTimer(Clock(0.02))
    with pytest.raises(TimeoutError):
        await timer.wait(lambda: asyncio.sleep(5))
    timer.close()


async def test_a_read_that_completes_in_time_returns_its_result() -> None:
    timer = ReadTimer(Clock(5))

    async def read() -> bytes:
        await asyncio.sleep(0)
        return b"chunk"

    assert await timer.wait(read) == b"chunk"
    timer.close()


async def test_a_deadline_already_passed_times_out_without_reading() -> None:
    timer = ReadTimer(Clock(-1))
    reads = []
    with pytest.raises(TimeoutError):
        await timer.wait(lambda: reads.append(1) or asyncio.sleep(0))  # type: ignore[func-returns-value]
    assert reads == []


async def test_a_deadline_moved_later_during_the_wait_is_the_one_kept() -> None:
    loop = asyncio.get_running_loop()
    clock = Clock(0.02)
    timer = ReadTimer(clock)
    began = loop.time()
    loop.call_later(0.01, lambda: setattr(clock, "at", loop.time() + 0.1))  # data came, 10 ms in
    with pytest.raises(TimeoutError):
        await timer.wait(lambda: asyncio.sleep(5))
    assert loop.time() - began >= 0.1  # not at the first deadline: at the moved one
    timer.close()


async def test_many_reads_share_one_timer() -> None:
    loop = asyncio.get_running_loop()
    timer = ReadTimer(Clock(5))
    armed = []
    call_at = loop.call_at

    def counting_call_at(when, callback, *args):  # type: ignore[no-untyped-def]
        armed.append(when)
        return call_at(when, callback, *args)

    loop.call_at = counting_call_at  # type: ignore[method-assign]
    try:
        for _ in range(100):
            await timer.wait(lambda: asyncio.sleep(0))
    finally:
        del loop.call_at  # the instance attribute goes; the class's method is back
        timer.close()
    assert len(armed) == 1


async def test_the_timer_firing_between_reads_cancels_nothing() -> None:
    clock = Clock(0.01)
    timer = ReadTimer(clock)
    await timer.wait(lambda: asyncio.sleep(0))  # armed for 10 ms from now
    await asyncio.sleep(0.03)  # not a read (a write to a slow client, say): never interrupted
    clock.at += 5
    assert await timer.wait(lambda: asyncio.sleep(0, "read")) == "read"
    timer.close()


async def wait_a_long_read(deadline_s: float) -> None:
    """A read of 5 s under a timer that fires after ``deadline_s``."""
    timer = ReadTimer(Clock(deadline_s))
    try:
        await timer.wait(lambda: asyncio.sleep(5))
    finally:
        timer.close()


async def test_a_real_cancellation_during_a_wait_stays_a_cancellation() -> None:
    timer_task = asyncio.create_task(wait_a_long_read(5))
    await asyncio.sleep(0.01)
    timer_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await timer_task


async def test_a_cancellation_at_the_moment_the_timer_fires_is_not_taken_for_a_timeout() -> None:
    task = asyncio.create_task(wait_a_long_read(0.01))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    loop.call_at(loop.time() + 0.01, task.cancel)  # the request is cancelled in the same instant
    await asyncio.sleep(0.05)
    assert task.cancelled()


# --- relay.next_chunk: the pump's read, on a real aiohttp StreamReader ---------------------------

def upstream_reader() -> aiohttp.StreamReader:
    protocol = BaseProtocol(asyncio.get_running_loop())
    protocol.connection_made(asyncio.Transport())  # a reader waits only while its connection is open
    return aiohttp.StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())


async def test_bytes_already_received_win_over_an_overdue_deadline() -> None:
    upstream = upstream_reader()
    upstream.feed_data(b"data: x\n\n")  # arrived while a slow client's write held the pump
    assert await next_chunk(ReadTimer(Clock(-1)), upstream) == b"data: x\n\n"


async def test_the_end_of_the_body_wins_over_an_overdue_deadline() -> None:
    upstream = upstream_reader()
    upstream.feed_eof()
    assert await next_chunk(ReadTimer(Clock(-1)), upstream) == b""


async def test_an_overdue_deadline_with_nothing_received_is_the_timer() -> None:
    assert await next_chunk(ReadTimer(Clock(-1)), upstream_reader()) is None


async def test_a_deadline_passing_during_the_read_is_the_timer() -> None:
    timer = ReadTimer(Clock(0.01))
    assert await next_chunk(timer, upstream_reader()) is None
    timer.close()
