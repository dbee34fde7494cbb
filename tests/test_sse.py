from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import sse
from gateway.sse import DONE, Event, SSEError, SSEParser, encode_comment, encode_event

BOM = b"\xef\xbb\xbf"


def parse(data: bytes, parser: SSEParser | None = None) -> list[Event]:
    p = parser or SSEParser()
    return p.feed(data) + p.close()


def parse_chunks(chunks: list[bytes], parser: SSEParser | None = None) -> list[Event]:
    p = parser or SSEParser()
    out: list[Event] = []
    for c in chunks:
        out += p.feed(c)
    return out + p.close()


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def datas(events: list[Event]) -> list[str]:
    return [e.data for e in events]


# --- line endings -----------------------------------------------------------


@pytest.mark.parametrize("nl", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_each_line_ending_style_terminates_lines_and_blocks(nl):
    stream = b"event: e" + nl + b"data: a" + nl + b"data: b" + nl + nl
    [ev] = parse(stream)
    assert (ev.event, ev.data) == ("e", "a\nb")


def test_mixed_line_endings_in_one_block():
    [ev] = parse(b"data: a\rdata: b\r\ndata: c\n\r\n")
    assert ev.data == "a\nb\nc"


def test_crlf_split_across_chunks_yields_one_event():
    # Were the \r and \n two endings, the \n would be a blank line -> 2 events.
    events = parse_chunks([b"data: a\r", b"\ndata: b\r\n\r\n"])
    assert datas(events) == ["a\nb"]


def test_split_crlf_blank_line_dispatches_at_cr_without_waiting():
    p = SSEParser()
    [ev] = p.feed(b"data: a\r\n\r")
    assert ev.data == "a"


def test_lf_after_dispatching_cr_is_skipped_and_in_no_raw():
    p = SSEParser()
    p.feed(b"data: a\r\n\r")
    [ev] = p.feed(b"\ndata: b\n\n")
    assert ev.raw == b"data: b\n\n"


def test_only_one_lf_after_cr_is_skipped():
    p = SSEParser()
    p.feed(b"data: a\r\n\r")
    assert p.feed(b"\n") == []
    assert p.buffered == 0
    assert p.feed(b"\n") == []  # a real (empty) block, not swallowed into the next
    [ev] = p.feed(b"data: b\n\n")
    assert ev.raw == b"data: b\n\n"


def test_crlf_terminated_block_raw_ends_at_cr():
    [ev] = parse(b"data: a\r\n\r\n")
    assert ev.raw == b"data: a\r\n\r"


def test_lone_cr_is_a_line_ending_not_part_of_a_value():
    [ev] = parse(b"data: a\rb\n\n")
    assert ev.data == "a"  # "b" is a field name without a value


# --- BOM --------------------------------------------------------------------


def test_bom_stripped_at_stream_start():
    [ev] = parse(BOM + b"data: x\n\n")
    assert (ev.data, ev.raw) == ("x", b"data: x\n\n")


@pytest.mark.parametrize("split", [1, 2])
def test_bom_split_across_first_chunks_is_stripped(split):
    [ev] = parse_chunks([BOM[:split], BOM[split:] + b"data: x\n\n"])
    assert (ev.data, ev.raw) == ("x", b"data: x\n\n")


def test_bom_fed_byte_by_byte_is_stripped():
    [ev] = parse_chunks(bytewise(BOM + b"data: x\n\n"))
    assert ev.raw == b"data: x\n\n"


def test_bom_only_stripped_at_stream_start():
    # A later BOM is content: it turns "data" into an unknown field name.
    events = parse(b"data: a\n\n" + BOM + b"data: b\n\n")
    assert datas(events) == ["a"]


def test_only_the_first_of_two_boms_is_stripped():
    assert parse(BOM + BOM + b"data: x\n\n") == []


def test_partial_bom_prefix_followed_by_other_bytes_is_kept():
    # "\xef" + "data" is not a BOM: the bytes stay, making an unknown field.
    assert parse_chunks([b"\xef", b"data: x\n\n"]) == []


# --- comments and field syntax ----------------------------------------------


def test_comment_lines_are_ignored():
    [ev] = parse(b": hello\ndata: a\n:data: b\n\n")
    assert ev.data == "a"


def test_comment_only_block_dispatches_nothing():
    assert parse(b": keep-alive\n\n") == []


def test_comment_only_block_is_not_part_of_next_raw():
    [ev] = parse(b": ping\n\ndata: a\n\n")
    assert ev.raw == b"data: a\n\n"


def test_field_without_colon_has_empty_value():
    [ev] = parse(b"data\ndata\ndata: x\n\n")
    assert ev.data == "\n\nx"


def test_only_one_leading_space_is_stripped():
    [ev] = parse(b"data:  two spaces \n\n")
    assert ev.data == " two spaces "


def test_value_without_leading_space_is_kept_verbatim():
    [ev] = parse(b"data:x\n\n")
    assert ev.data == "x"


def test_value_may_contain_colons():
    [ev] = parse(b'data: {"a": "b:c"}\n\n')
    assert ev.data == '{"a": "b:c"}'


def test_multiline_data_joined_with_newline():
    [ev] = parse(b"data: a\ndata:\ndata: c\n\n")
    assert ev.data == "a\n\nc"


def test_unknown_fields_are_ignored():
    [ev] = parse(b"foo: bar\nDATA: shout\ndata : spaced\ndata: a\n\n")
    assert (ev.data, ev.event, ev.id, ev.retry) == ("a", "message", None, None)


def test_field_names_are_case_sensitive():
    assert parse(b"Data: a\n\n") == []


# --- strict: a peer known to speak SSE ----------------------------------------


def test_strict_accepts_comments_and_the_four_fields():
    p = SSEParser(strict=True)
    [ev] = parse(b": hi\nevent: e\nid: 1\nretry: 5\ndata: a\ndata\n\n", p)
    assert (ev.event, ev.id, ev.retry, ev.data) == ("e", "1", 5, "a\n")


@pytest.mark.parametrize("line", [b"<html><body>502 Bad Gateway</body></html>", b'{"error": "no stream"}',
                                  b"Data: shout", b"data : spaced"])
def test_strict_rejects_a_line_that_is_not_sse(line):
    with pytest.raises(SSEError, match="neither a comment nor a field"):
        SSEParser(strict=True).feed(line + b"\n")


def test_strict_rejection_carries_the_events_completed_before_the_line():
    with pytest.raises(SSEError) as raised:
        SSEParser(strict=True).feed(b"data: a\n\ndata: b\n\n<html>\ndata: c\n\n")
    assert datas(raised.value.events) == ["a", "b"]


def test_strict_judges_a_line_only_once_it_is_complete():
    p = SSEParser(strict=True)
    assert p.feed(b"dat") == []
    [ev] = p.feed(b"a: a\n\n")
    assert ev.data == "a"


# --- id ---------------------------------------------------------------------


def test_id_is_none_when_never_set():
    [ev] = parse(b"data: a\n\n")
    assert ev.id is None


def test_id_with_nul_is_ignored():
    events = parse(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n")
    assert [e.id for e in events] == ["1", "1"]


def test_id_persists_across_events():
    events = parse(b"id: 7\ndata: a\n\ndata: b\n\nid: 8\ndata: c\n\n")
    assert [e.id for e in events] == ["7", "7", "8"]


def test_empty_id_resets_last_event_id_to_empty_string():
    events = parse(b"id: 1\ndata: a\n\nid\ndata: b\n\n")
    assert [e.id for e in events] == ["1", ""]


def test_id_only_block_updates_last_event_id_for_later_events():
    p = SSEParser()
    assert p.feed(b"id: 5\n\n") == []
    assert p.last_event_id == "5"
    [ev] = p.feed(b"data: a\n\n")
    assert ev.id == "5"


def test_last_event_id_is_committed_only_when_block_ends():
    p = SSEParser()
    p.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n")
    assert p.last_event_id == "1"  # an unfinished event must not move the resume point
    p.feed(b"\n")
    assert p.last_event_id == "2"


# --- retry ------------------------------------------------------------------


def test_retry_with_only_ascii_digits_is_accepted():
    [ev] = parse(b"retry: 3000\ndata: a\n\n")
    assert ev.retry == 3000


@pytest.mark.parametrize(
    "value", ["", "1a", " 5", "-1", "1.5", "\u0661\u0662", "\u00b2"], ids=repr
)
def test_retry_not_solely_ascii_digits_is_ignored(value):
    [ev] = parse(b"retry: " + value.encode() + b"\ndata: a\n\n")
    assert ev.retry is None


def test_invalid_retry_does_not_clear_earlier_valid_one_in_block():
    [ev] = parse(b"retry: 10\nretry: x\ndata: a\n\n")
    assert ev.retry == 10


def test_retry_is_reported_only_on_its_own_block():
    p = SSEParser()
    events = p.feed(b"retry: 10\ndata: a\n\ndata: b\n\n")
    assert [e.retry for e in events] == [10, None]
    assert p.reconnection_time == 10


def test_retry_only_block_sets_reconnection_time():
    p = SSEParser()
    assert p.feed(b"retry: 2500\n\n") == []
    assert p.reconnection_time == 2500


def test_retry_too_long_for_int_conversion_is_ignored():
    [ev] = parse(b"retry: " + b"9" * 10_000 + b"\ndata: a\n\n")
    assert ev.retry is None


# --- dispatch ---------------------------------------------------------------


def test_no_dispatch_without_final_blank_line():
    p = SSEParser()
    assert p.feed(b"data: a\n") == []
    assert p.close() == []
    assert p.discarded_partial is True


def test_close_after_complete_events_discards_nothing():
    p = SSEParser()
    p.feed(b"data: a\n\n")
    p.close()
    assert p.discarded_partial is False


def test_close_with_only_whitespace_pending_is_not_a_discard():
    p = SSEParser()
    p.feed(b"data: a\n\n  \t")
    p.close()
    assert p.discarded_partial is False


def test_empty_data_field_dispatches_event_with_empty_data():
    [ev] = parse(b"data:\n\n")
    assert ev.data == ""


def test_block_without_data_field_dispatches_nothing():
    assert parse(b"event: x\nid: 3\nretry: 5\n\n") == []


def test_consecutive_blank_lines_dispatch_nothing():
    assert datas(parse(b"\n\n\r\n\rdata: a\n\n\n\n")) == ["a"]


def test_missing_event_type_defaults_to_message():
    [ev] = parse(b"data: a\n\n")
    assert ev.event == "message"


def test_empty_event_type_is_message():
    [ev] = parse(b"event:\ndata: a\n\n")
    assert ev.event == "message"


def test_event_type_reset_after_dispatch():
    events = parse(b"event: x\ndata: a\n\ndata: b\n\n")
    assert [e.event for e in events] == ["x", "message"]


def test_event_type_reset_after_block_without_data():
    [ev] = parse(b"event: x\n\ndata: b\n\n")
    assert ev.event == "message"


def test_last_event_field_in_block_wins():
    [ev] = parse(b"event: a\nevent: b\ndata: x\n\n")
    assert ev.event == "b"


def test_one_chunk_yields_all_completed_events_in_order():
    p = SSEParser()
    assert datas(p.feed(b"data: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4")) == ["1", "2", "3"]


# --- raw --------------------------------------------------------------------


def test_raw_is_exact_block_bytes_including_comments_and_crlf():
    block = b": c1\r\nevent: e\r\n:c2\rdata:  x\nfoo\r\n\n"
    [ev] = parse(block)
    assert ev.raw == block


def test_raw_starts_after_previous_blank_line():
    stream = b"data: a\n\n: c\nid: 1\ndata: b\r\n\n"
    events = parse(stream)
    assert [e.raw for e in events] == [b"data: a\n\n", b": c\nid: 1\ndata: b\r\n\n"]


def test_raw_includes_lf_of_crlf_split_mid_block():
    [ev] = parse_chunks([b"data: a\r", b"\ndata: b\n\n"])
    assert ev.raw == b"data: a\r\ndata: b\n\n"


def test_raw_excludes_dataless_block_before_it():
    [ev] = parse(b"event: x\nid: 2\n\ndata: a\n\n")
    assert (ev.raw, ev.id) == (b"data: a\n\n", "2")


# --- UTF-8 ------------------------------------------------------------------


def test_multibyte_utf8_split_across_chunks_decodes_correctly():
    text = "h\u00e9llo \u20ac \U0001f600 \u4e2d"
    [ev] = parse_chunks(bytewise(b"event: \xf0\x9f\x98\x80\ndata: " + text.encode() + b"\n\n"))
    assert (ev.event, ev.data) == ("\U0001f600", text)


def test_invalid_utf8_is_replaced():
    [ev] = parse(b"data: a\xffb\xe2\x82\n\n")
    assert ev.data == "a\ufffdb\ufffd"


# --- limits and memory ------------------------------------------------------


def test_incomplete_event_over_max_event_bytes_raises():
    p = SSEParser(max_event_bytes=100)
    p.feed(b"data: " + b"x" * 90)
    with pytest.raises(SSEError):
        p.feed(b"x" * 10)


def test_complete_event_over_max_event_bytes_in_one_chunk_raises():
    with pytest.raises(SSEError):
        SSEParser(max_event_bytes=100).feed(b"data: " + b"x" * 100 + b"\n\n")


def test_an_oversized_event_error_carries_the_events_completed_before_it():
    with pytest.raises(SSEError) as raised:
        SSEParser(max_event_bytes=100).feed(b"data: a\n\n" + b"data: " + b"x" * 200)
    assert datas(raised.value.events) == ["a"]


def test_event_exactly_max_event_bytes_is_accepted():
    block = b"data: " + b"x" * 92 + b"\n\n"
    assert len(block) == 100
    [ev] = SSEParser(max_event_bytes=100).feed(block)
    assert ev.raw == block


def test_limit_applies_per_event_not_per_stream():
    p = SSEParser(max_event_bytes=100)
    for _ in range(50):
        assert len(p.feed(b"data: " + b"x" * 50 + b"\n\n")) == 1


def test_buffered_shrinks_after_dispatch():
    p = SSEParser()
    p.feed(b"data: " + b"x" * 1000 + b"\n")
    assert p.buffered > 1000
    p.feed(b"\ndata: y")
    assert p.buffered == len(b"data: y")


def test_buffered_shrinks_after_comment_only_block():
    p = SSEParser()
    p.feed(b": " + b"x" * 1000 + b"\n\n")
    assert p.buffered == 0


# --- linear time (instrumented, never timed) --------------------------------


class CountingRegex:
    """Stands in for sse._LINE_END and tallies bytes the search examines."""

    def __init__(self, real: re.Pattern[bytes]) -> None:
        self.real = real
        self.scanned = 0
        self.calls = 0

    def search(self, buf, pos=0):
        m = self.real.search(buf, pos)
        self.calls += 1
        self.scanned += (m.end() if m else len(buf)) - pos
        return m


@pytest.fixture
def counter(monkeypatch):
    c = CountingRegex(sse._LINE_END)
    monkeypatch.setattr(sse, "_LINE_END", c)
    return c


def test_one_mib_event_fed_byte_by_byte_scans_each_byte_once(counter):
    payload = b"data: " + b"x" * (1 << 20) + b"\n\n"
    p = SSEParser()
    events: list[Event] = []
    for i in range(len(payload)):
        before = counter.scanned
        events += p.feed(payload[i : i + 1])
        # Work per one-byte chunk must not grow with the buffer. Checked on
        # every feed so a quadratic regression fails at once instead of hanging.
        if counter.scanned - before > 2:
            pytest.fail(f"feed #{i} scanned {counter.scanned - before} bytes")
    assert len(events) == 1 and len(events[0].data) == 1 << 20
    assert counter.scanned <= 2 * len(payload)


def test_many_lines_in_small_chunks_scan_linearly(counter):
    payload = b"".join(b"data: %d\r\n" % i for i in range(100_000)) + b"\r\n"
    events = parse_chunks([payload[i : i + 7] for i in range(0, len(payload), 7)])
    assert len(events) == 1
    assert counter.scanned <= 2 * len(payload)


# --- real-world fixtures ----------------------------------------------------

OPENAI_STREAM = (
    b'data: {"id":"chatcmpl-9x","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    b'"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-9x","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-9x","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"lo \xc3\xa9"},"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-9x","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)

ANTHROPIC_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant",'
    b'"content":[],"model":"claude-sonnet-4","stop_reason":null,"usage":{"input_tokens":12,"output_tokens":1}}}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    b"event: ping\n"
    b'data: {"type": "ping"}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" world"}}\n\n'
    b"event: content_block_stop\n"
    b'data: {"type":"content_block_stop","index":0}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    b'"usage":{"output_tokens":2}}\n\n'
    b"event: message_stop\n"
    b'data: {"type":"message_stop"}\n\n'
)


@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_openai_chat_completion_stream(split):
    events = parse(OPENAI_STREAM) if split == "whole" else parse_chunks(bytewise(OPENAI_STREAM))
    assert [e.event for e in events] == ["message"] * 5
    assert events[-1].data == "[DONE]" and events[-1].raw == DONE
    chunks = [json.loads(e.data) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Hello \u00e9"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert b"".join(e.raw for e in events) == OPENAI_STREAM


@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_anthropic_messages_stream(split):
    stream = ANTHROPIC_STREAM
    events = parse(stream) if split == "whole" else parse_chunks(bytewise(stream))
    assert [e.event for e in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    payloads = [json.loads(e.data) for e in events]
    assert [p["type"] for p in payloads] == [e.event for e in events]
    text = "".join(p["delta"]["text"] for p in payloads if p["type"] == "content_block_delta")
    assert text == "Hello world"
    assert b"".join(e.raw for e in events) == stream


# --- encoder ----------------------------------------------------------------


def test_encode_event_writes_fields_in_order_with_lf():
    got = encode_event("hi", event="delta", id="42", retry=1000)
    assert got == b"event: delta\nid: 42\nretry: 1000\ndata: hi\n\n"


def test_encode_event_minimal():
    assert encode_event("x") == b"data: x\n\n"


def test_encode_event_splits_every_newline_style_into_data_lines():
    assert encode_event("a\r\nb\rc\nd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"


def test_encode_event_keeps_unicode_line_separators_inside_a_line():
    assert encode_event("a\u2028b\x85c") == "data: a\u2028b\x85c\n\n".encode()


def test_encode_event_accepts_bytes_data_verbatim_per_line():
    assert encode_event(b"\xc3\xa9\r\nz") == b"data: \xc3\xa9\ndata: z\n\n"


def test_encode_event_empty_data_is_one_empty_data_line():
    assert encode_event("") == b"data: \n\n"


@pytest.mark.parametrize(
    "kwargs",
    [{"event": "a\nb"}, {"event": "a\rb"}, {"id": "1\n2"}, {"id": "1\r"}, {"id": "1\x002"}, {"retry": -1}],
    ids=repr,
)
def test_encode_event_rejects_unsafe_fields(kwargs):
    with pytest.raises(ValueError):
        encode_event("x", **kwargs)


def test_encode_comment_is_a_self_contained_block():
    assert encode_comment("ping") == b": ping\n\n"
    p = SSEParser()
    assert p.feed(encode_comment("ping")) == [] and p.buffered == 0


def test_encode_comment_multiline_text_stays_comments():
    assert encode_comment("a\nb") == b": a\n: b\n\n"
    assert parse(encode_comment("a\ndata: evil")) == []


def test_done_sentinel_parses_to_done_data():
    [ev] = parse(DONE)
    assert (ev.data, ev.raw) == ("[DONE]", DONE)


# --- properties -------------------------------------------------------------

NO_NL = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"))
KNOWN = {"data", "event", "id", "retry"}
FIELD_NAMES = st.text(
    st.characters(codec="utf-8", exclude_characters="\r\n:\ufeff"), min_size=1
).filter(lambda s: s not in KNOWN)
ITEMS = st.one_of(
    st.tuples(st.just("data"), NO_NL),
    st.tuples(st.just("event"), NO_NL),
    st.tuples(st.just("id"), NO_NL),
    st.tuples(st.just("retry"), st.from_regex(r"[0-9]{1,6}", fullmatch=True) | NO_NL),
    st.tuples(st.just(":"), NO_NL),
    st.tuples(FIELD_NAMES, NO_NL),
)
ENDINGS = (b"\n", b"\r", b"\r\n")


@st.composite
def streams(draw, endings=ENDINGS, every_block_has_data=False):
    """(stream bytes, expected events, whether close() should report a discard)."""
    out = bytearray(BOM if draw(st.booleans()) else b"")
    expected: list[Event] = []
    id_buf: str | None = None
    prev_end = b"\n"

    def line(name: str, value: str) -> bytes:
        nonlocal prev_end
        if name == ":":
            body = ":" + value
        elif value == "" and draw(st.booleans()):
            body = name
        elif not value.startswith(" ") and draw(st.booleans()):
            body = f"{name}:{value}"
        else:
            body = f"{name}: {value}"
        prev_end = draw(st.sampled_from(endings))
        return body.encode() + prev_end

    n_blocks = draw(st.integers(0, 6))
    for i in range(n_blocks + 1):
        items = draw(st.lists(ITEMS, max_size=6))
        if every_block_has_data:
            items.insert(0, ("data", draw(NO_NL)))
        block = b"".join(line(n, v) for n, v in items)
        if i == n_blocks:  # unterminated tail: never dispatched
            out += block
            return bytes(out), expected, bool(block.strip())
        # "\r" then a blank line "\n" would merge into one CRLF ending.
        blank_ok = [e for e in endings if not (prev_end == b"\r" and e == b"\n")] or [b"\r\n"]
        prev_end = draw(st.sampled_from(blank_ok))
        block += prev_end
        out += block
        data = [v for n, v in items if n == "data"]
        etype = ([""] + [v for n, v in items if n == "event"])[-1]
        retry = None
        for n, v in items:
            if n == "id" and "\0" not in v:
                id_buf = v
            if n == "retry" and re.fullmatch(r"[0-9]+", v):
                retry = int(v)
        if data:
            raw = block[:-1] if block.endswith(b"\r\n") else block
            expected.append(Event(raw, "\n".join(data), etype or "message", id_buf, retry))
    raise AssertionError("unreachable")


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=300)
@given(st.data())
def test_arbitrary_chunking_gives_same_events_as_whole_stream(draw):
    stream, expected, discarded = draw.draw(streams())
    cuts = draw.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    whole = SSEParser()
    assert whole.feed(stream) + whole.close() == expected
    chunked = SSEParser()
    assert parse_chunks(split_at(stream, cuts), chunked) == expected
    assert whole.discarded_partial is chunked.discarded_partial is discarded
    assert whole.last_event_id == chunked.last_event_id


@settings(max_examples=200)
@given(st.data())
def test_lf_only_stream_is_reconstructed_from_raws(draw):
    stream, expected, _ = draw.draw(streams(endings=(b"\n",), every_block_has_data=True))
    cuts = draw.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    p = SSEParser()
    events = [e for c in split_at(stream, cuts) for e in p.feed(c)]
    body = stream.removeprefix(BOM)
    assert b"".join(e.raw for e in events) + body[len(body) - p.buffered :] == body


@given(st.data())
def test_byte_at_a_time_matches_whole_stream(draw):
    stream, expected, _ = draw.draw(streams())
    assert parse_chunks(bytewise(stream)) == expected


@given(
    data=st.text(),
    event=st.none() | NO_NL,
    id=st.none() | st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00")),
    retry=st.none() | st.integers(min_value=0),
    as_bytes=st.booleans(),
)
def test_encode_event_round_trips_through_parser(data, event, id, retry, as_bytes):
    encoded = encode_event(data.encode() if as_bytes else data, event=event, id=id, retry=retry)
    [ev] = parse(encoded)
    assert ev.data == re.sub(r"\r\n|\r", "\n", data)
    assert ev.event == (event or "message")
    assert (ev.id, ev.retry, ev.raw) == (id, retry, encoded)


@given(st.text())
def test_encode_comment_never_dispatches(text):
    p = SSEParser()
    assert p.feed(encode_comment(text)) == [] and p.buffered == 0


def test_the_last_event_id_is_committed_by_events_of_the_fast_path_too() -> None:
    parser = SSEParser()
    parser.feed(b"id: 5\n")
    parser.close()  # the block never ended: its id stays pending, not committed
    assert parser.last_event_id is None
    parser.feed(b"data: x\n\n")
    assert parser.last_event_id == "5"


def test_a_memoryview_chunk_gives_the_events_of_its_bytes() -> None:
    [event] = SSEParser().feed(memoryview(b"data: x\n\n"))  # type: ignore[arg-type]
    assert event.raw == b"data: x\n\n" and type(event.raw) is bytes and event.data == "x"
