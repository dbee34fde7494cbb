"""The request record's rules (gateway/record.py) and its log (one structlog chain per log)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import structlog

from gateway.config import Price, Target
from gateway.errors import GatewayError
from gateway.providers import Completion, Usage
from gateway.record import (
    LOGGED_FIELDS,
    SCHEMA_VERSION,
    RecordFinished,
    RequestLog,
    RequestRecord,
)

PRICES = {"m": Price(input_per_mtok=2.0, output_per_mtok=10.0)}


class Served:
    def __init__(self, usage: Usage, source: str) -> None:
        self._tokens = usage, source

    def tokens(self) -> tuple[Usage, str]:
        return self._tokens


def record_for(model: str = "m") -> RequestRecord:
    record = RequestRecord("r1", "chat_completions", scrub=lambda text: text.replace("sk-secret", "[redacted]"))
    record.attempt_started(Target("p", model), fallback=False)
    return record


def test_a_log_writes_into_its_own_file_even_after_another_log_is_created(tmp_path: Path) -> None:
    first, second = RequestLog(str(tmp_path / "a.log")), RequestLog(str(tmp_path / "b.log"))
    record = RequestRecord("from-a", "chat_completions")
    record.finished({})
    first.emit(record)
    first.close()
    second.close()
    assert [orjson.loads(line)["request_id"] for line in (tmp_path / "a.log").read_bytes().splitlines()] == ["from-a"]
    assert (tmp_path / "b.log").read_bytes() == b""


def test_the_log_line_has_every_logged_field_and_the_event_name(tmp_path: Path) -> None:
    log = RequestLog(str(tmp_path / "a.log"))
    record = RequestRecord("r", "stream_chat")
    record.finished({})
    log.emit(record)
    log.close()
    line = orjson.loads((tmp_path / "a.log").read_bytes())
    assert set(line) == {"schema", "ts", "event", *LOGGED_FIELDS} and line["event"] == "request"


def test_a_request_line_is_the_bytes_the_structlog_chain_renders(tmp_path: Path) -> None:
    record = record_for()
    record.attempt_failed(0, "upstream_error")
    record.failed(GatewayError(502, "upstream_error", "Provider p said sk-secret"))
    record.finished(PRICES)
    log = RequestLog(str(tmp_path / "a.log"))
    log.emit(record)
    log.close()
    chain = structlog.wrap_logger(structlog.BytesLogger(open(tmp_path / "chain.log", "wb")),
                                  processors=[structlog.processors.JSONRenderer(serializer=orjson.dumps)])
    chain.info("request", **record.fields())
    assert (tmp_path / "a.log").read_bytes() == (tmp_path / "chain.log").read_bytes()


def test_an_edge_event_is_a_line_of_its_own_event_with_schema_and_time(tmp_path: Path) -> None:
    log = RequestLog(str(tmp_path / "a.log"))
    log.event("bad_http", peer="127.0.0.1", count=1)
    log.close()
    line = orjson.loads((tmp_path / "a.log").read_bytes())
    assert line["event"] == "bad_http" and line["schema"] == SCHEMA_VERSION and line["ts"].endswith("Z")
    assert (line["peer"], line["count"]) == ("127.0.0.1", 1)


def test_an_unfinished_record_cannot_be_logged(tmp_path: Path) -> None:
    log = RequestLog(str(tmp_path / "a.log"))
    with pytest.raises(RuntimeError):
        log.emit(RequestRecord("r", "chat_completions"))
    log.close()


def test_a_record_finishes_once() -> None:
    record = record_for()
    record.finished(PRICES)
    with pytest.raises(RecordFinished):
        record.finished(PRICES)


def test_a_response_is_committed_once() -> None:
    record = record_for()
    record.committed()
    with pytest.raises(RuntimeError):
        record.committed()


def test_a_failure_before_any_token_costs_nothing() -> None:
    record = record_for()
    record.failed(GatewayError(502, "upstream_error", "down"))
    record.finished(PRICES)
    assert (record.cost_usd, record.usage_source, record.status) == (0.0, "none", 502)


def test_served_tokens_are_priced_from_the_upstream_model() -> None:
    record = record_for()
    record.served_by(Served(Usage(1000, 500), "upstream"))
    record.finished(PRICES)
    assert (record.prompt_tokens, record.completion_tokens) == (1000, 500)
    assert record.cost_usd == pytest.approx((1000 * 2.0 + 500 * 10.0) / 1e6)


def test_an_estimate_is_priced_and_says_it_is_an_estimate() -> None:
    record = record_for()
    record.served_by(Served(Usage(None, 7), "estimated"))
    record.finished(PRICES)
    assert (record.usage_source, record.cost_usd) == ("estimated", pytest.approx(7 * 10.0 / 1e6))


def test_a_successful_answer_without_usage_has_an_unknown_cost() -> None:
    record = record_for()
    record.served_by(Completion(b"{}", "", Usage()))
    record.finished(PRICES)
    assert (record.usage_source, record.cost_usd) == ("none", None)


def test_a_model_without_a_price_has_an_unknown_cost() -> None:
    record = record_for("unpriced")
    record.served_by(Served(Usage(3, 4), "upstream"))
    record.finished(PRICES)
    assert record.cost_usd is None


def test_a_failure_message_is_scrubbed_once_for_the_client_and_the_log() -> None:
    record = record_for()
    error = record.failed(GatewayError(502, "upstream_error", "answered 401: bad key sk-secret"))
    assert error.message == record.error_message == "answered 401: bad key [redacted]"
    assert b"sk-secret" not in error.json()


def test_a_failure_after_commit_keeps_the_status_already_sent() -> None:
    record = record_for()
    record.committed()
    record.failed(GatewayError(504, "timeout_idle", "silent", outcome="timeout_idle"))
    assert (record.status, record.outcome, record.error_code) == (200, "timeout_idle", "timeout_idle")


def test_a_crash_is_logged_with_its_type_and_answered_generically() -> None:
    record = record_for()
    answer = record.crashed(KeyError("sk-secret"))
    assert (answer.status, answer.message) == (500, "The gateway failed to handle the request")
    assert (record.outcome, record.error_code) == ("gateway_error", "internal_error")
    assert record.error_message == "KeyError: '[redacted]'"


def test_ttft_is_the_first_write_that_carries_model_output() -> None:
    record = record_for()
    record.wrote(10, 1, 0, record.started + 0.1)  # a role chunk: no output yet
    record.wrote(10, 1, 1, record.started + 0.25)
    record.wrote(10, 1, 1, record.started + 0.5)
    record.finished(PRICES)
    assert (record.ttft_ms, record.max_gap_ms, record.events_out, record.bytes_out) == (250.0, 250.0, 3, 30)
