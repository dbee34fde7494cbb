"""The Messages endpoint's request checks and error shape, without I/O (gateway/messages/)."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from gateway.errors import GatewayError
from gateway.messages.errors import ERROR_TYPES, error_body, error_event, error_type
from gateway.messages.request import parse_messages_request
from gateway.sse import SSEParser

from .conftest import ROOT
from .test_observability import documented_error_codes

USER = {"role": "user", "content": "hi"}
BASE: dict[str, Any] = {"model": "chat", "max_tokens": 32, "messages": [USER]}


def refused(body: Any) -> GatewayError:
    with pytest.raises(GatewayError) as raised:
        parse_messages_request(body)
    assert raised.value.status == 400 and raised.value.code == "invalid_request"
    return raised.value


# --- what is accepted, and kept as sent ---------------------------------------------------------

def test_a_request_is_kept_exactly_as_sent() -> None:
    body = {**BASE, "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "top_k": 5, "stop_sequences": ["END"], "temperature": 0.5, "top_p": 0.9}
    request = parse_messages_request(body)
    assert request.body is body and request.dialect == "anthropic"


def test_the_user_key_is_metadata_user_id() -> None:
    assert parse_messages_request({**BASE, "metadata": {"user_id": "u-7"}}).user == "u-7"
    assert parse_messages_request(BASE).user is None


def test_stream_defaults_to_false() -> None:
    assert parse_messages_request(BASE).stream is False
    assert parse_messages_request({**BASE, "stream": True}).stream is True


def test_a_tool_conversation_is_accepted() -> None:
    parse_messages_request({**BASE, "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
                            "tool_choice": {"type": "tool", "name": "weather"}, "messages": [
        USER,
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
    ]})


def test_block_types_the_gateway_does_not_read_are_left_to_the_provider() -> None:
    parse_messages_request({**BASE, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]})


# --- what is refused, naming the field --------------------------------------------------------------

@pytest.mark.parametrize(("body", "param"), [
    ([1, 2], None),
    ({"messages": [USER], "max_tokens": 5}, "model"),
    ({"model": "chat", "messages": [USER]}, "max_tokens"),
    ({**BASE, "max_tokens": 0}, "max_tokens"),
    ({**BASE, "max_tokens": True}, "max_tokens"),
    ({**BASE, "messages": []}, "messages"),
    ({**BASE, "messages": "hi"}, "messages"),
    ({**BASE, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
    ({**BASE, "messages": [{"role": "assistant", "content": "x"}]}, "messages.0.role"),
    ({**BASE, "messages": [USER, USER]}, "messages.1.role"),
    ({**BASE, "messages": [{**USER, "name": "bob"}]}, "messages.0.name"),
    ({**BASE, "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({**BASE, "messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages.0.content.0"),
    ({**BASE, "messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text"),
    ({**BASE, "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "n",
                                                          "input": {}}]}]}, "messages.0.content.0.type"),
    ({**BASE, "system": 7}, "system"),
    ({**BASE, "system": [{"type": "image"}]}, "system.0"),
    ({**BASE, "stream": "yes"}, "stream"),
    ({**BASE, "temperature": 1.5}, "temperature"),
    ({**BASE, "top_p": -1}, "top_p"),
    ({**BASE, "top_k": 2.5}, "top_k"),
    ({**BASE, "stop_sequences": "END"}, "stop_sequences"),
    ({**BASE, "metadata": {"user_id": 7}}, "metadata.user_id"),
    ({**BASE, "metadata": {"session": "x"}}, "metadata.session"),
    ({**BASE, "tools": [{"name": "t"}]}, "tools.0.input_schema"),
    ({**BASE, "tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
    ({**BASE, "tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ({**BASE, "n": 2}, "n"),
    ({**BASE, "prompt": "hi"}, "prompt"),
])
def test_an_invalid_request_is_a_400_whose_message_starts_with_the_field(body: Any, param: str | None) -> None:
    error = refused(body)
    assert error.param == param
    if param is not None:
        assert error.message.startswith(f"{param}: ")


def test_unknown_fields_are_refused_not_passed_on() -> None:
    assert refused({**BASE, "service_tier": "auto"}).message == "service_tier: Extra inputs are not permitted"


def test_a_wrong_role_order_says_what_the_order_must_be() -> None:
    assert "must alternate" in refused({**BASE, "messages": [USER, USER]}).message


# --- the error shape -----------------------------------------------------------------------------

def test_an_error_body_is_anthropics_shape() -> None:
    body = orjson.loads(error_body(GatewayError(400, "invalid_request", "max_tokens: Field required")))
    assert body == {"type": "error", "error": {"type": "invalid_request_error",
                                               "message": "max_tokens: Field required"}}


def test_an_error_event_is_named_error_and_carries_the_same_body() -> None:
    error = GatewayError(502, "upstream_error", "Provider p broke the stream")
    [event] = SSEParser().feed(error_event(error))
    assert event.event == "error" and event.data.encode() == error_body(error)


def test_every_documented_error_code_has_an_anthropic_type() -> None:
    # Never sent: nobody is reading (a resumable stream expired or cancelled is dropped, not ended with an event).
    unsent = {"client_disconnected", "resume_window_expired", "stream_cancelled"}
    assert set(documented_error_codes()) - unsent - {"upstream_rejected"} <= set(ERROR_TYPES)


@pytest.mark.parametrize(("status", "code", "kind"), [
    (504, "timeout_first_token", "timeout_error"),
    (429, "upstream_rate_limited", "rate_limit_error"),
    (502, "upstream_auth_failed", "api_error"),
    (413, "request_too_large", "request_too_large"),
    (404, "model_not_found", "not_found_error"),
    (404, "upstream_rejected", "not_found_error"),
    (422, "upstream_rejected", "invalid_request_error"),
    (401, "gateway_key_invalid", "authentication_error"),
    (403, "gateway_key_forbidden", "permission_error"),
    (529, "overloaded", "overloaded_error"),
])
def test_the_error_type_follows_the_code_else_the_status(status: int, code: str, kind: str) -> None:
    assert error_type(GatewayError(status, code, "x")) == kind


def test_the_readmes_error_type_table_is_the_one_the_code_uses() -> None:
    section = (ROOT / "README.md").read_text().split("\n## Messages API\n", 1)[1].split("\n## ", 1)[0]
    documented = {code: row.split("|")[1].strip(" `")
                  for row in section.splitlines() if row.startswith("| `")
                  for code in re.findall(r"`(\w+)`", row.split("|")[2])}
    assert {code: kind for code, kind in documented.items() if code != "upstream_rejected"} == {
        code: kind for code, kind in ERROR_TYPES.items() if code not in ("not_found", "method_not_allowed")}
