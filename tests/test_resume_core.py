"""The rules of resumable streams, without I/O (gateway/resume.py), and the in-process event log
(gateway/eventlog.py) that replays from a sequence number and follows the live tail."""

from __future__ import annotations

import asyncio

from gateway.eventlog import Chunk, MemoryEventLogs
from gateway.resume import (
    EventFramer,
    Presence,
    StreamMeta,
    frame,
    new_stream_id,
    new_token,
    parse_last_event_id,
    token_digest,
    token_matches,
)
from gateway.sse import SSEParser

TOKEN = b'data: {"token":"a"}\n\n'


def test_an_id_line_goes_before_the_events_own_lines_so_a_parser_gives_it_that_id() -> None:
    events = SSEParser().feed(frame(3, TOKEN) + frame(4, b"event: done\ndata: {}\n\n"))
    assert [(e.id, e.event, e.data) for e in events] == [("3", "message", '{"token":"a"}'), ("4", "done", "{}")]


def test_an_event_with_crlf_line_endings_keeps_its_id() -> None:
    [event] = SSEParser().feed(frame(9, b"data: [DONE]\r\n\r\n"))
    assert (event.id, event.data) == ("9", "[DONE]")


def test_the_framer_numbers_events_from_1_across_batches() -> None:
    framer = EventFramer(max_bytes=1024)
    assert framer.frame([TOKEN, TOKEN]) == [(1, b"id: 1\n" + TOKEN), (2, b"id: 2\n" + TOKEN)]
    assert framer.frame([TOKEN]) == [(3, b"id: 3\n" + TOKEN)]
    assert framer.stored == 3 * len(b"id: 1\n" + TOKEN)


def test_a_batch_past_the_bound_is_refused_whole_and_nothing_is_counted() -> None:
    framer = EventFramer(max_bytes=2 * len(b"id: 1\n" + TOKEN))
    assert framer.frame([TOKEN, TOKEN, TOKEN]) is None
    assert (framer.stored, framer.last_seq) == (0, 0)
    assert framer.frame([TOKEN, TOKEN]) is not None


def test_the_ending_is_stored_past_the_bound_with_the_next_id() -> None:
    framer = EventFramer(max_bytes=len(b"id: 1\n" + TOKEN))
    framer.frame([TOKEN])
    assert framer.frame([TOKEN]) is None
    assert framer.frame_last(b"event: error\ndata: {}\n\n") == (2, b"id: 2\nevent: error\ndata: {}\n\n")


def test_last_event_id_is_a_decimal_sequence_number_or_nothing() -> None:
    assert [parse_last_event_id(v) for v in (None, "", "0", "40", " 7 ")] == [0, 0, 0, 40, 7]
    assert [parse_last_event_id(v) for v in ("-1", "1.5", "abc", "٣", "9" * 19)] == [None] * 5


def test_tokens_carry_at_least_128_random_bits_and_only_their_digest_is_kept() -> None:
    token = new_token()
    assert len(token) >= 22 and token != new_token()  # 32 bytes, URL-safe base64: 43 characters
    digest = token_digest(token)
    assert token not in digest and token_matches(digest, token)
    assert not token_matches(digest, token[:-1]) and not token_matches(digest, "")
    assert new_stream_id() != new_stream_id()


def test_presence_expires_only_after_a_whole_window_without_a_client() -> None:
    presence = Presence(window_s=30)
    assert presence.observe(present=True, now=0.0) is False
    assert presence.observe(present=False, now=1.0) is False
    assert presence.observe(present=False, now=30.9) is False
    assert presence.observe(present=True, now=30.95) is False  # came back just in time: the clock restarts
    assert presence.observe(present=False, now=40.0) is False
    assert presence.observe(present=False, now=69.9) is False
    assert presence.observe(present=False, now=70.0) is True


def test_presence_sums_every_absence() -> None:
    presence = Presence(window_s=30)
    for now, present in [(1.0, False), (2.0, True), (5.0, False), (5.5, True)]:
        presence.observe(present=present, now=now)
    assert presence.away_ms(100.0) == 1500.0
    presence.observe(present=False, now=10.0)
    assert presence.away_ms(10.25) == 1750.0


META = StreamMeta("s", token_digest("t"), "", "req", "here")


async def test_a_reader_after_n_gets_the_events_after_n_and_then_the_live_tail() -> None:
    logs = MemoryEventLogs()
    await logs.create(META, ttl_s=60)
    await logs.append("s", [(1, b"e1"), (2, b"e2"), (3, b"e3")], ttl_s=60)
    assert await logs.read("s", after=1, wait_s=1) == Chunk([(2, b"e2"), (3, b"e3")], False)
    waiting = asyncio.create_task(logs.read("s", after=3, wait_s=5))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await logs.append("s", [(4, b"e4")], ttl_s=60)
    assert await asyncio.wait_for(waiting, 1) == Chunk([(4, b"e4")], False)
    await logs.end("s", keep_s=60)
    assert await logs.read("s", after=4, wait_s=5) == Chunk([], True)
    await logs.close()


async def test_an_expired_stream_is_gone_and_its_followers_stop() -> None:
    logs = MemoryEventLogs()
    await logs.create(META, ttl_s=0.05)
    follower = asyncio.create_task(logs.read("s", after=0, wait_s=5))
    await asyncio.sleep(0.1)
    assert await asyncio.wait_for(follower, 1) == Chunk([], True)
    assert await logs.meta("s") is None


async def test_presence_is_a_readers_touch_until_it_leaves() -> None:
    logs = MemoryEventLogs()
    await logs.create(META, ttl_s=60)
    assert await logs.present("s") is False
    await logs.touch("s", ttl_s=3)
    assert await logs.present("s") is True
    await logs.leave("s")
    assert await logs.present("s") is False
    await logs.close()


async def test_the_memory_of_a_stream_in_process_is_its_events_and_little_more() -> None:
    # Measured: 1,000 streams of 40 token events each (what a 40-token answer stores), held at once.
    import tracemalloc

    framer_bytes = 0
    tracemalloc.start()
    logs = MemoryEventLogs()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(1000):
        await logs.create(StreamMeta(f"s{n}", token_digest("t"), "", f"r{n}", "here"), ttl_s=60)
        framer = EventFramer(max_bytes=1 << 20)
        framed = framer.frame([b'data: {"token":" word%d"}\n\n' % i for i in range(40)])
        assert framed is not None
        await logs.append(f"s{n}", framed, ttl_s=60)
        framer_bytes += framer.stored
    per_stream = (tracemalloc.get_traced_memory()[0] - before) / 1000
    tracemalloc.stop()
    await logs.close()
    print(f"\nin-process: {per_stream / 1024:.1f} KiB per stream for {framer_bytes / 1000:.0f} B of events")
    assert per_stream < framer_bytes / 1000 * 3 + 2048
