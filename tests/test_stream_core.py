"""The relay's decisions, byte by byte (gateway/stream_core.py): no sockets, no event loop."""

from __future__ import annotations

import socket
import ssl

import aiohttp
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.providers.anthropic import AnthropicStream
from gateway.providers.openai import OpenAIStream
from gateway.renderers import ChatCompletionsRenderer, TokenStreamRenderer
from gateway.stream_core import (
    HEARTBEAT,
    AttemptFailed,
    Deadlines,
    Phase,
    PhaseError,
    UpstreamStream,
    backoff_delay,
    classify_status,
    not_an_event_stream,
    opening_timeout,
    parse_retry_after,
    unreachable,
)


def chunk(text: str) -> bytes:
    return b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}) + b"\n\n"


ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
DONE = b"data: [DONE]\n\n"
WHOLE = ROLE + chunk("Hel") + chunk("lo") + USAGE + DONE


def openai_stream(include_usage: bool = False, *, idle_s: float = 30, heartbeat_s: float = 15,
                  total_at: float = 600, max_event_bytes: int = 1 << 20) -> UpstreamStream:
    return UpstreamStream("p", OpenAIStream(), ChatCompletionsRenderer(include_usage),
                          Deadlines(0.0, idle_s=idle_s, heartbeat_s=heartbeat_s, total_at=total_at, total_s=600),
                          max_event_bytes=max_event_bytes)


def committed(stream: UpstreamStream, first: bytes = ROLE + chunk("Hel")) -> UpstreamStream:
    assert stream.feed_opening(first)
    stream.commit(0.0)
    return stream


# --- OPENING -----------------------------------------------------------------------

def test_events_before_the_first_output_are_held_not_ready() -> None:
    assert openai_stream().feed_opening(ROLE) is False


def test_the_first_output_makes_the_stream_ready_and_commit_renders_everything_held() -> None:
    stream = openai_stream()
    assert stream.feed_opening(ROLE) is False
    assert stream.feed_opening(chunk("Hel")) is True
    batch = stream.commit(0.0)
    assert (batch.data, batch.events, batch.outputs, batch.ended) == (ROLE + chunk("Hel"), 2, 1, False)
    assert stream.phase is Phase.STREAMING


def test_a_terminator_with_no_output_is_ready_too() -> None:
    stream = openai_stream()
    assert stream.feed_opening(USAGE + DONE)
    assert stream.commit(0.0).done


def test_an_empty_read_while_opening_is_a_retryable_failure() -> None:
    with pytest.raises(AttemptFailed) as failed:
        openai_stream().feed_opening(b"")
    assert failed.value.retryable and failed.value.error.code == "upstream_error"


def test_an_upstream_error_event_while_opening_is_a_retryable_failure() -> None:
    with pytest.raises(AttemptFailed) as failed:
        openai_stream().feed_opening(b'data: {"error": {"message": "overloaded"}}\n\n')
    assert failed.value.retryable and "overloaded" in failed.value.error.message


def test_an_oversized_event_while_opening_is_a_retryable_failure_not_unbounded_memory() -> None:
    with pytest.raises(AttemptFailed) as failed:
        openai_stream(max_event_bytes=1024).feed_opening(b"data: " + b"x" * 4096)
    assert failed.value.retryable
    assert failed.value.error.message == "Provider p broke the event stream: an incomplete event exceeds 1024 bytes"


def test_an_endless_line_fails_within_one_chunk_past_the_limit() -> None:
    stream, piece, fed = openai_stream(max_event_bytes=1 << 20), b"x" * 65536, 0
    with pytest.raises(AttemptFailed):
        stream.feed_opening(b"data: ")
        while fed < 64 << 20:  # the 64 MiB the upstream might send
            stream.feed_opening(piece)
            fed += len(piece)
    assert fed <= 1 << 20  # refused at the chunk that crossed the limit: never more held than that


@pytest.mark.parametrize("garbage", [b"<html><body>502 Bad Gateway</body></html>\n",
                                     b'{"error": {"message": "not a stream"}}\n'])
def test_bytes_that_are_not_sse_while_opening_are_a_retryable_failure(garbage: bytes) -> None:
    with pytest.raises(AttemptFailed) as failed:
        openai_stream().feed_opening(ROLE + garbage)
    assert failed.value.retryable and failed.value.error.code == "upstream_error"
    assert failed.value.error.message == ("Provider p broke the event stream: a line is neither a comment nor a "
                                          "field (data, event, id, retry)")


@pytest.mark.parametrize("translator", [OpenAIStream, lambda: AnthropicStream("m")], ids=["openai", "anthropic"])
def test_invalid_json_in_data_while_opening_is_a_retryable_failure(translator: type) -> None:
    stream = UpstreamStream("p", translator(), TokenStreamRenderer(),
                            Deadlines(0.0, idle_s=30, heartbeat_s=15, total_at=600, total_s=600))
    with pytest.raises(AttemptFailed) as failed:
        stream.feed_opening(b'data: {"choices": [\n\n')
    assert failed.value.retryable and failed.value.error.code == "upstream_error"
    assert "not JSON" in failed.value.error.message


def test_commit_before_the_stream_is_ready_is_a_phase_error() -> None:
    stream = openai_stream()
    stream.feed_opening(ROLE)
    with pytest.raises(PhaseError):
        stream.commit(0.0)


def test_feeding_a_stream_that_has_not_been_committed_is_a_phase_error() -> None:
    with pytest.raises(PhaseError):
        openai_stream().feed(chunk("x"), 0.0)


# --- STREAMING -----------------------------------------------------------------------

def test_each_complete_event_is_rendered_and_a_partial_one_waits() -> None:
    stream = committed(openai_stream())
    whole = chunk("lo")
    first = stream.feed(whole[:10], 1.0)
    assert (first.data, first.events) == (b"", 0)
    rest = stream.feed(whole[10:], 1.1)
    assert (rest.data, rest.events, rest.outputs) == (whole, 1, 1)


def test_a_crlf_split_across_chunks_yields_one_event() -> None:
    stream = committed(openai_stream())
    event = chunk("lo").replace(b"\n", b"\r\n")
    assert stream.feed(event[:-3], 1.0).events == 0  # ends in "\r\n\r": the last CR might start a CRLF
    batch = stream.feed(event[-3:], 1.0)
    assert (batch.events, batch.outputs) == (1, 1)


def test_the_usage_only_chunk_is_dropped_unless_the_client_asked_for_it() -> None:
    assert committed(openai_stream(include_usage=False)).feed(USAGE, 1.0).data == b""
    assert committed(openai_stream(include_usage=True)).feed(USAGE, 1.0).data == USAGE


def test_the_terminator_ends_the_stream_well() -> None:
    stream = committed(openai_stream())
    batch = stream.feed(USAGE + DONE, 1.0)
    assert batch.done and batch.error is None and stream.phase is Phase.ENDED


def test_events_before_an_in_chunk_error_are_delivered_then_the_error_ends_the_stream() -> None:
    stream = committed(openai_stream())
    batch = stream.feed(chunk("lo") + b'data: {"error": {"message": "boom"}}\n\n' + chunk("never"), 1.0)
    assert batch.data == chunk("lo") and batch.outputs == 1
    assert batch.error is not None and batch.error.code == "upstream_error" and "boom" in batch.error.message
    assert stream.phase is Phase.ENDED


def test_the_body_ending_without_the_terminator_is_truncated_never_a_clean_end() -> None:
    batch = committed(openai_stream()).feed(b"", 1.0)
    assert batch.error is not None and (batch.error.code, batch.error.outcome) == ("upstream_truncated", "truncated")


def test_an_oversized_event_mid_stream_ends_it_with_an_error() -> None:
    stream = committed(openai_stream(max_event_bytes=1024))
    batch = stream.feed(b"data: " + b"x" * 4096, 1.0)
    assert batch.error is not None and batch.error.code == "upstream_error"
    assert "exceeds 1024 bytes" in batch.error.message and stream.phase is Phase.ENDED


def test_events_before_an_oversized_event_in_the_same_chunk_are_delivered_first() -> None:
    batch = committed(openai_stream(max_event_bytes=1024)).feed(chunk("lo") + b"data: " + b"x" * 4096, 1.0)
    assert (batch.data, batch.outputs) == (chunk("lo"), 1)
    assert batch.error is not None and "exceeds 1024 bytes" in batch.error.message


def test_bytes_that_are_not_sse_mid_stream_end_it_after_the_events_before_them() -> None:
    stream = committed(openai_stream())
    batch = stream.feed(chunk("lo") + b"<html>\n" + chunk("never"), 1.0)
    assert (batch.data, batch.outputs) == (chunk("lo"), 1)
    assert batch.error is not None and batch.error.code == "upstream_error"
    assert "neither a comment nor a field" in batch.error.message and stream.phase is Phase.ENDED


def test_invalid_json_in_data_mid_stream_ends_it_with_an_error() -> None:
    batch = committed(openai_stream()).feed(chunk("lo") + b"data: {not json\n\n", 1.0)
    assert batch.data == chunk("lo")
    assert batch.error is not None and batch.error.code == "upstream_error" and "not JSON" in batch.error.message


def test_bytes_after_the_terminator_do_not_spoil_a_clean_end() -> None:
    batch = committed(openai_stream()).feed(DONE + b"<html>\n", 1.0)
    assert batch.done and batch.error is None


def test_a_broken_connection_ends_the_stream_naming_only_the_exception_type() -> None:
    batch = committed(openai_stream()).broken("ClientPayloadError")
    assert batch.error is not None and batch.error.message == "Provider p broke the stream: ClientPayloadError"


def test_the_shutdown_ends_a_stream_with_its_own_error_not_a_clean_end() -> None:
    stream = committed(openai_stream())
    batch = stream.shut_down()
    assert batch.error is not None and not batch.done and stream.phase is Phase.ENDED
    assert (batch.error.code, batch.error.outcome, batch.error.status) == ("gateway_shutting_down", "shutdown", 503)


def test_nothing_may_be_fed_after_the_end() -> None:
    stream = committed(openai_stream())
    stream.feed(DONE, 1.0)
    with pytest.raises(PhaseError):
        stream.feed(chunk("late"), 2.0)


@given(st.lists(st.integers(min_value=1, max_value=len(WHOLE) - 1), unique=True).map(sorted))
def test_any_chunking_renders_the_same_bytes_as_the_whole(cuts: list[int]) -> None:
    pieces = [WHOLE[a:b] for a, b in zip([0, *cuts], [*cuts, len(WHOLE)])]
    stream = openai_stream(include_usage=True)
    out = b""
    opening = iter(pieces)
    for piece in opening:
        if stream.feed_opening(piece):
            break
    out += stream.commit(0.0).data
    for piece in opening:
        out += stream.feed(piece, 1.0).data
    assert out == WHOLE and stream.phase is Phase.ENDED


def test_anthropic_events_render_as_browser_tokens() -> None:
    events = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"m1","usage":'
              b'{"input_tokens":4}}}\n\n'
              b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":"text_delta",'
              b'"text":"Hi"}}\n\n')
    stream = UpstreamStream("an", AnthropicStream("m"), TokenStreamRenderer(),
                            Deadlines(0.0, idle_s=30, heartbeat_s=15, total_at=600, total_s=600))
    assert stream.feed_opening(events)
    assert stream.commit(0.0).data == b'data: {"token":"Hi"}\n\n'


# --- which deadline fired ---------------------------------------------------------------

def test_upstream_silence_shorter_than_idle_brings_a_heartbeat() -> None:
    stream = committed(openai_stream(idle_s=30, heartbeat_s=15))
    assert stream.wake_at() == 15
    assert stream.timer_fired(15.0) is HEARTBEAT
    assert stream.wake_at() == 30  # the heartbeat restarts the client-side clock, not the idle one


def test_upstream_silence_for_idle_s_ends_the_stream_with_timeout_idle() -> None:
    stream = committed(openai_stream(idle_s=30, heartbeat_s=15))
    stream.timer_fired(15.0)
    batch = stream.timer_fired(30.0)
    assert batch.error is not None and batch.error.code == "timeout_idle" and stream.phase is Phase.ENDED


def test_data_restarts_both_clocks() -> None:
    stream = committed(openai_stream(idle_s=30, heartbeat_s=15))
    stream.feed(chunk("x"), 10.0)
    assert stream.wake_at() == 25


def test_the_total_deadline_wins_over_the_other_clocks() -> None:
    stream = committed(openai_stream(idle_s=30, heartbeat_s=15, total_at=12))
    assert stream.wake_at() == 12
    batch = stream.timer_fired(12.0)
    assert batch.error is not None and batch.error.code == "timeout_total"


# --- the tokens to account --------------------------------------------------------------

def test_upstream_usage_is_accounted_as_sent() -> None:
    stream = committed(openai_stream())
    stream.feed(chunk("lo") + USAGE + DONE, 1.0)
    usage, source = stream.tokens()
    assert (usage.prompt_tokens, usage.completion_tokens, source) == (3, 2, "upstream")


def test_without_usage_each_output_delta_counts_as_one_token() -> None:
    stream = committed(openai_stream())
    stream.feed(chunk("lo") + chunk("!"), 1.0)
    usage, source = stream.tokens()
    assert (usage.prompt_tokens, usage.completion_tokens, source) == (None, 3, "estimated")


# --- the retry policy ----------------------------------------------------------------------

@pytest.mark.parametrize(("status", "code", "retryable", "client_status"), [
    (429, "upstream_rate_limited", True, 429),
    (500, "upstream_error", True, 502),
    (503, "upstream_error", True, 502),
    (401, "upstream_auth_failed", False, 502),
    (403, "upstream_auth_failed", False, 502),
    (400, "upstream_rejected", False, 400),
    (422, "upstream_rejected", False, 422),
    (302, "upstream_rejected", False, 502),
])
def test_an_upstream_status_is_retryable_or_final(status: int, code: str, retryable: bool,
                                                    client_status: int) -> None:
    failed = classify_status("p", status, b"", None)
    assert (failed.error.code, failed.retryable, failed.error.status) == (code, retryable, client_status)


def test_the_upstream_error_message_is_quoted_from_its_body() -> None:
    failed = classify_status("p", 500, b'{"error": {"message": "model overloaded"}}', None)
    assert failed.error.message == "Provider p answered 500: model overloaded"


@pytest.mark.parametrize("content_type", ["text/event-stream", "text/event-stream; charset=utf-8",
                                          "Text/Event-Stream", None])
def test_an_event_stream_or_an_unlabelled_body_may_be_read(content_type: str | None) -> None:
    assert not_an_event_stream("p", content_type) is None


@pytest.mark.parametrize(("content_type", "shown"), [("text/html; charset=utf-8", "text/html"),
                                                     ("application/json", "application/json"),
                                                     ("", "an empty Content-Type")])
def test_a_200_that_is_not_an_event_stream_is_a_retryable_failure(content_type: str, shown: str) -> None:
    failed = not_an_event_stream("p", content_type)
    assert failed is not None and failed.retryable and failed.error.code == "upstream_error"
    assert failed.error.message == f"Provider p answered 200 with {shown}, not text/event-stream"


# Exception text the gateway must never repeat: aiohttp's carries the connection key (host, proxy auth).
LEAKY = "proxy_auth=BasicAuth(login='u', password='sk-proxy-secret')"


@pytest.mark.parametrize(("exc", "kind"), [
    (aiohttp.ClientConnectorError(None, socket.gaierror(-2, LEAKY)), "DNS lookup failed"),
    (aiohttp.ClientConnectorCertificateError(None, ssl.SSLCertVerificationError(1, LEAKY)),
     "TLS handshake failed: certificate not trusted"),
    (aiohttp.ClientConnectorSSLError(None, ssl.SSLError(1, LEAKY)), "TLS handshake failed"),
    (aiohttp.ClientConnectorError(None, ConnectionRefusedError(111, LEAKY)),
     "connection refused"),
    (aiohttp.ServerDisconnectedError(LEAKY), "ServerDisconnectedError"),
], ids=["dns", "tls-certificate", "tls", "refused", "other"])
def test_a_connection_failure_is_retryable_and_named_by_kind_never_by_its_text(exc: Exception, kind: str) -> None:
    failed = unreachable("p", exc)
    assert failed.retryable and failed.error.code == "upstream_unreachable" and failed.error.status == 502
    assert failed.error.message == f"Could not reach provider p: {kind}"


def test_retry_after_seconds_are_read_and_an_http_date_is_ignored() -> None:
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT") is None
    assert classify_status("p", 429, b"", "2").retry_after == 2.0


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    ceilings = [backoff_delay(n, 100, 2000, None, uniform=lambda low, high: high) for n in range(6)]
    assert ceilings == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert backoff_delay(3, 100, 2000, None, uniform=lambda low, high: low) == 0


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    assert backoff_delay(0, 100, 2000, 1.0, uniform=lambda low, high: low) == 1.0
    assert backoff_delay(0, 100, 2000, 60.0, uniform=lambda low, high: low) == 2.0


def test_an_opening_wait_that_ran_out_is_first_token_unless_the_deadline_passed() -> None:
    first = opening_timeout(5.0, total_at=600, total_s=600, first_token_s=5)
    assert isinstance(first, AttemptFailed) and first.retryable and first.error.code == "timeout_first_token"
    total = opening_timeout(600.0, total_at=600, total_s=600, first_token_s=5)
    assert not isinstance(total, AttemptFailed) and total.code == "timeout_total"
