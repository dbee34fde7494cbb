"""The Messages endpoint's two paths, without I/O: an Anthropic provider's events relayed as they
are, and the translation to and from an OpenAI-compatible provider (gateway/messages/)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import GatewayError
from gateway.messages.from_chat import MessagesFromChat, to_message
from gateway.messages.to_chat import to_chat
from gateway.providers import Piece
from gateway.providers.anthropic import AnthropicRelay
from gateway.sse import SSEParser, encode_event

USER = {"role": "user", "content": "hi"}
BASE: dict[str, Any] = {"model": "chat", "max_tokens": 32, "messages": [USER]}


def sse(data: dict[str, Any]) -> bytes:
    return encode_event(orjson.dumps(data), event=data["type"])


# --- an Anthropic provider: its own bytes ---------------------------------------------------------

ANTHROPIC_STREAM = (
    b'event: message_start\r\ndata: {"type":"message_start","message":{"id":"msg_1","model":"claude-x",'
    b'"usage":{"input_tokens":5,"output_tokens":1}}}\r\n\r\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b'event: ping\ndata: {"type": "ping"}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hel"}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"lo"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":2}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


def relay(raw: bytes) -> tuple[AnthropicRelay, list[Piece]]:
    stream = AnthropicRelay()
    return stream, [piece for event in SSEParser().feed(raw) for piece in stream.translate(event)]


def test_every_anthropic_event_is_relayed_as_the_bytes_the_provider_sent() -> None:
    events = SSEParser().feed(ANTHROPIC_STREAM)
    _, pieces = relay(ANTHROPIC_STREAM)
    assert [p.sse for p in pieces] == [e.raw for e in events]


def test_the_relay_reads_usage_text_and_the_end() -> None:
    stream, pieces = relay(ANTHROPIC_STREAM)
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (5, 2)
    assert "".join(p.text for p in pieces) == "Hello" and sum(p.model_output for p in pieces) == 2
    assert [p.done for p in pieces] == [False] * 7 + [True]


def test_the_relay_counts_thinking_and_tool_input_as_output() -> None:
    _, pieces = relay(b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                      b'"delta":{"type":"thinking_delta","thinking":"hmm"}}\n\n'
                      b'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,'
                      b'"delta":{"type":"input_json_delta","partial_json":"{"}}\n\n')
    assert [p.model_output for p in pieces] == [True, True]


def test_an_event_type_the_gateway_does_not_know_is_relayed_too() -> None:
    _, [piece] = relay(b'event: future\ndata: {"type":"future","x":1}\n\n')
    assert piece.sse == b'event: future\ndata: {"type":"future","x":1}\n\n' and not piece.error


def test_an_anthropic_error_event_ends_the_stream_with_the_gateways_own() -> None:
    _, [piece] = relay(b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                       b'"message":"Overloaded"}}\n\n')
    assert piece.sse is None and piece.error == "upstream error: overloaded_error: Overloaded"


# --- a Messages request for an OpenAI-compatible provider ----------------------------------------

def chat_for(**fields: Any) -> dict[str, Any]:
    return to_chat({**BASE, **fields}, "cheap")


def refusal(**fields: Any) -> GatewayError:
    with pytest.raises(GatewayError) as raised:
        chat_for(**fields)
    assert raised.value.status == 400 and "Chat Completions cannot carry" in raised.value.message
    return raised.value


def test_system_text_becomes_the_first_message_without_its_cache_hints() -> None:
    chat = chat_for(system=[{"type": "text", "text": "be ", "cache_control": {"type": "ephemeral"}},
                            {"type": "text", "text": "brief"}])
    assert chat["messages"] == [{"role": "system", "content": "be brief"}, USER]


def test_text_blocks_become_one_string() -> None:
    chat = chat_for(messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                           {"type": "text", "text": "b"}]}])
    assert chat["messages"] == [{"role": "user", "content": "ab"}]


def test_images_become_image_url_parts() -> None:
    chat = chat_for(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]}])
    assert chat["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]


TOOL_TURNS = [
    USER,
    {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                      {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Oslo"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"},
                                 {"type": "text", "text": "and tomorrow?"}]},
]


def test_tool_use_becomes_tool_calls_with_json_arguments() -> None:
    assistant = chat_for(messages=TOOL_TURNS)["messages"][1]
    assert assistant == {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}]}


def test_a_tool_result_becomes_a_tool_message_before_the_rest_of_the_turn() -> None:
    assert chat_for(messages=TOOL_TURNS)["messages"][2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"}, {"role": "user", "content": "and tomorrow?"}]


def test_a_failed_tool_result_says_so_in_its_text() -> None:
    turns = [*TOOL_TURNS[:2], {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "is_error": True,
         "content": [{"type": "text", "text": "city unknown"}]}]}]
    assert chat_for(messages=turns)["messages"][2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "Error: city unknown"}]


def test_a_tool_call_alone_has_null_content() -> None:
    turns = [USER, {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "n", "input": {}}]}]
    assert chat_for(messages=turns)["messages"][1]["content"] is None


def test_tools_become_functions() -> None:
    chat = chat_for(tools=[{"name": "weather", "description": "Forecast", "input_schema": {"type": "object"},
                            "cache_control": {"type": "ephemeral"}}])
    assert chat["tools"] == [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"},
                                                              "description": "Forecast"}}]


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "any"}, {"tool_choice": "required"}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "tool", "name": "weather"}, {"tool_choice": {"type": "function", "function": {"name": "weather"}}}),
    ({"type": "auto", "disable_parallel_tool_use": True}, {"tool_choice": "auto", "parallel_tool_calls": False}),
])
def test_tool_choice_is_translated(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    chat = chat_for(tool_choice=choice)
    assert {k: chat[k] for k in expected} == expected


def test_sampling_stop_and_user_are_translated() -> None:
    chat = chat_for(temperature=0.2, top_p=0.9, top_k=40, stop_sequences=["END"], metadata={"user_id": "u-1"})
    assert {k: v for k, v in chat.items() if k != "messages"} == {
        "max_tokens": 32, "temperature": 0.2, "top_p": 0.9, "top_k": 40, "stop": ["END"], "user": "u-1"}


def test_thinking_disabled_is_the_default_and_sends_nothing() -> None:
    assert "thinking" not in chat_for(thinking={"type": "disabled"})


IMAGE = {"type": "image", "source": {"type": "url", "url": "https://example.com/x.png"}}


@pytest.mark.parametrize(("fields", "param"), [
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
    ({"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]},
     "messages.0.content.0.type"),
    ({"messages": [USER, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"}]}]}, "messages.1.content.0.type"),
    ({"messages": [USER, {"role": "assistant", "content": [IMAGE]}]}, "messages.1.content.0.type"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}]}, "messages.0.content.0.source.type"),
    ({"messages": [*TOOL_TURNS[:2], {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                                                   "content": [IMAGE]}]}]},
     "messages.2.content.0.content.0.type"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
])
def test_what_chat_completions_cannot_carry_is_a_400_naming_the_field(fields: dict[str, Any], param: str) -> None:
    error = refusal(**fields)
    assert error.param == param and error.message.startswith(f"{param}: ")


# --- an OpenAI-compatible provider's stream, as Anthropic events ---------------------------------------

def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    return b"data: " + orjson.dumps({"id": "c1", "model": "deepseek-x", **extra, "choices": [
        {"index": 0, "delta": delta, "finish_reason": finish}]}) + b"\n\n"


USAGE = b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2}}\n\n'
DONE = b"data: [DONE]\n\n"
OPENAI_STREAM = (chunk({"role": "assistant", "content": ""}) + chunk({"content": "Hel"}) + chunk({"content": "lo"})
                 + chunk({}, "stop") + USAGE + DONE)


def translate(raw: bytes) -> tuple[MessagesFromChat, list[Piece]]:
    stream = MessagesFromChat("m")
    return stream, [piece for event in SSEParser().feed(raw) for piece in stream.translate(event)]


def events_of(pieces: list[Piece]) -> list[dict[str, Any]]:
    return [orjson.loads(event.data) for p in pieces if p.sse for event in SSEParser().feed(p.sse)]


def test_an_openai_stream_becomes_anthropics_event_sequence_byte_for_byte() -> None:
    _, pieces = translate(OPENAI_STREAM)
    message = {"id": "msg_c1", "type": "message", "role": "assistant", "model": "deepseek-x", "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
    assert b"".join(p.sse or b"" for p in pieces) == b"".join(sse(e) for e in [
        {"type": "message_start", "message": message},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"input_tokens": 4, "output_tokens": 2}},
        {"type": "message_stop"},
    ])


def test_each_piece_is_one_event_and_only_deltas_are_output() -> None:
    _, pieces = translate(OPENAI_STREAM)
    assert all(p.sse is not None and p.sse.count(b"\n\n") == 1 for p in pieces)
    assert [p.model_output for p in pieces] == [False, False, False, True, True, False, False, False]
    assert [p.done for p in pieces][-1] and "".join(p.text for p in pieces) == "Hello"


def test_the_usage_chunk_is_the_streams_usage() -> None:
    stream, _ = translate(OPENAI_STREAM)
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (4, 2)


def test_without_usage_output_tokens_are_estimated_one_per_output_delta() -> None:
    _, pieces = translate(OPENAI_STREAM.replace(USAGE, b""))
    assert events_of(pieces)[-2]["usage"] == {"output_tokens": 2}


@pytest.mark.parametrize(("finish", "stop_reason"), [("stop", "end_turn"), ("length", "max_tokens"),
                                                      ("tool_calls", "tool_use"), ("content_filter", "refusal")])
def test_finish_reason_becomes_stop_reason(finish: str, stop_reason: str) -> None:
    _, pieces = translate(OPENAI_STREAM.replace(b'"finish_reason":"stop"', f'"finish_reason":"{finish}"'.encode()))
    assert events_of(pieces)[-2]["delta"] == {"stop_reason": stop_reason, "stop_sequence": None}


def test_tool_calls_become_tool_use_blocks_with_input_json_deltas() -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather", "arguments": ""}}
    raw = (chunk({"role": "assistant", "content": "Looking"}) + chunk({"tool_calls": [call]})
           + chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]})
           + chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]})
           + chunk({}, "tool_calls") + DONE)
    _, pieces = translate(raw)
    events = events_of(pieces)
    assert [(e["type"], e.get("index")) for e in events[2:-2]] == [
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_delta", 1),
        ("content_block_stop", 1)]
    assert events[5]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "weather", "input": {}}
    assert "".join(e["delta"]["partial_json"] for e in events[6:8]) == '{"city":"Oslo"}'
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    assert sum(p.model_output for p in pieces) == 4  # one per output delta: text, tool start, two arguments


def test_reasoning_is_output_with_nothing_to_forward() -> None:
    _, pieces = translate(chunk({"reasoning_content": "hmm"}))
    assert [(p.sse is None, p.model_output) for p in pieces][-1] == (True, True)


@pytest.mark.parametrize("raw", [b'data: {"error":{"message":"overloaded"}}\n\n', b"data: not json\n\n",
                                 b"data: [1]\n\n"])
def test_an_openai_error_or_garbage_event_is_an_error(raw: bytes) -> None:
    _, [piece] = translate(raw)
    assert piece.error


# --- an OpenAI-compatible provider's completion, as a message ----------------------------------------

def completion(message: dict[str, Any], finish: str = "stop", **extra: Any) -> bytes:
    return orjson.dumps({"id": "c9", "object": "chat.completion", "model": "deepseek-x", **extra,
                         "choices": [{"index": 0, "message": message, "finish_reason": finish}]})


def test_a_completion_becomes_a_message() -> None:
    answer = to_message(completion({"role": "assistant", "content": "Hi!"}, "length",
                                   usage={"prompt_tokens": 4, "completion_tokens": 2}), "m")
    assert orjson.loads(answer.body) == {
        "id": "msg_c9", "type": "message", "role": "assistant", "model": "deepseek-x",
        "content": [{"type": "text", "text": "Hi!"}], "stop_reason": "max_tokens", "stop_sequence": None,
        "usage": {"input_tokens": 4, "output_tokens": 2}}
    assert (answer.text, answer.tokens()[1]) == ("Hi!", "upstream")


def test_tool_calls_in_a_completion_become_tool_use_blocks() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}
    answer = to_message(completion({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"), "m")
    body = orjson.loads(answer.body)
    assert body["content"] == [{"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}}]
    assert body["stop_reason"] == "tool_use"


def test_a_completion_without_usage_is_not_accounted() -> None:
    answer = to_message(completion({"role": "assistant", "content": "Hi"}), "m")
    assert answer.tokens()[1] == "none"
