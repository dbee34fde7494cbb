"""The dialects are pure functions of bytes and dicts: tested without any I/O."""

from __future__ import annotations

import orjson
import pytest

from gateway.config import Provider
from gateway.errors import GatewayError
from gateway.providers import ChatRequest, anthropic, error_message, openai
from gateway.sse import SSEParser

OPENAI = Provider(name="oa", dialect="openai", base_url="https://api.example/v1", api_key="sk-abc")
ANTHROPIC = Provider(name="an", dialect="anthropic", base_url="https://api.anthropic.example",
                     api_key="ak-xyz", default_max_tokens=333)
CHAT = {"model": "public", "messages": [{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": "hi"}], "stream": True}


def openai_client(chat: dict) -> ChatRequest:
    return ChatRequest("openai", chat, chat.get("model"), bool(chat.get("stream")), chat.get("user"))


def events(raw: bytes) -> list:
    return SSEParser().feed(raw)


def test_openai_request_asks_for_usage_and_names_the_upstream_model() -> None:
    request = openai.DIALECT.build_request(OPENAI, "gpt-x", openai_client(CHAT), stream=True)
    body = orjson.loads(request.body)
    assert request.url == "https://api.example/v1/chat/completions"
    assert request.headers["Authorization"] == "Bearer sk-abc"
    assert (body["model"], body["stream"], body["stream_options"]) == ("gpt-x", True, {"include_usage": True})
    assert body["messages"] == CHAT["messages"]


def test_openai_non_stream_request_has_no_stream_options() -> None:
    request = openai.DIALECT.build_request(OPENAI, "gpt-x", openai_client({**CHAT, "stream": False}), False)
    body = orjson.loads(request.body)
    assert "stream_options" not in body and body["stream"] is False


def test_openai_content_delta_is_forwarded_raw_with_its_text() -> None:
    [event] = events(b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\r\n\r\n')
    [piece] = openai.OpenAIStream().translate(event)
    assert (piece.sse, piece.text, piece.model_output) == (event.raw, "Hi", True)


def test_openai_reasoning_delta_is_output_without_text() -> None:
    [event] = events(b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}\n\n')
    [piece] = openai.OpenAIStream().translate(event)
    assert (piece.text, piece.model_output) == ("", True)


def test_openai_role_chunk_is_not_output() -> None:
    [event] = events(b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n')
    assert openai.OpenAIStream().translate(event)[0].model_output is False


def test_openai_usage_chunk_is_usage_only_and_recorded() -> None:
    stream = openai.OpenAIStream()
    [event] = events(b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}\n\n')
    [piece] = stream.translate(event)
    assert piece.usage_only and (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (3, 7)


def test_openai_done_is_the_terminator() -> None:
    [piece] = openai.OpenAIStream().translate(events(b"data: [DONE]\n\n")[0])
    assert piece.done and piece.sse == b"data: [DONE]\n\n"


@pytest.mark.parametrize("raw", [b'data: {"error":{"message":"overloaded"}}\n\n', b"data: not json\n\n",
                                 b"data: [1]\n\n"])
def test_openai_error_or_garbage_event_is_an_error(raw: bytes) -> None:
    assert openai.OpenAIStream().translate(events(raw)[0])[0].error


def test_anthropic_request_moves_system_and_stop_and_defaults_max_tokens() -> None:
    request = anthropic.DIALECT.build_request(ANTHROPIC, "claude-x",
                                              openai_client({**CHAT, "stop": "END", "user": "u1"}), True)
    body = orjson.loads(request.body)
    assert request.url == "https://api.anthropic.example/v1/messages"
    assert request.headers["x-api-key"] == "ak-xyz" and request.headers["anthropic-version"] == "2023-06-01"
    assert body == {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 333,
                    "stream": True, "system": "be brief", "stop_sequences": ["END"],
                    "metadata": {"user_id": "u1"}}


def test_anthropic_request_flattens_text_parts() -> None:
    chat = {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                              {"type": "text", "text": "b"}]}]}
    body = orjson.loads(anthropic.DIALECT.build_request(ANTHROPIC, "c", openai_client(chat), True).body)
    assert body["messages"] == [{"role": "user", "content": "ab"}]


@pytest.mark.parametrize("chat", [{**CHAT, "tools": [{"type": "function"}]},
                                  {**CHAT, "messages": [{"role": "tool", "content": "x"}]}])
def test_anthropic_request_rejects_what_it_cannot_translate(chat: dict) -> None:
    with pytest.raises(GatewayError) as raised:
        anthropic.DIALECT.build_request(ANTHROPIC, "c", openai_client(chat), True)
    assert raised.value.status == 400


ANTHROPIC_STREAM = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","model":"claude-x",'
    b'"usage":{"input_tokens":5,"output_tokens":1}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b'event: ping\ndata: {"type":"ping"}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hel"}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"lo"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},'
    b'"usage":{"output_tokens":2}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


def translate_all(raw: bytes) -> tuple[anthropic.AnthropicStream, list]:
    stream = anthropic.AnthropicStream("claude-x")
    return stream, [p for e in events(raw) for p in stream.translate(e)]


def test_anthropic_stream_becomes_openai_chunks_ending_in_done() -> None:
    stream, pieces = translate_all(ANTHROPIC_STREAM)
    chunks = [orjson.loads(p.sse[len(b"data: "):]) for p in pieces
              if p.sse and p.sse != b"data: [DONE]\n\n"]
    assert [c["choices"][0]["delta"] for c in chunks if c["choices"]] == [
        {"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"}, {}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert all(c["id"] == "chatcmpl-msg_1" and c["object"] == "chat.completion.chunk" for c in chunks)
    assert pieces[-1].done and pieces[-1].sse == b"data: [DONE]\n\n"
    assert "".join(p.text for p in pieces) == "Hello"


def test_anthropic_placeholder_output_tokens_do_not_count_as_usage() -> None:
    stream, _ = translate_all(ANTHROPIC_STREAM.split(b"event: content_block_delta")[0])
    assert not stream.usage.known and stream.usage.prompt_tokens == 5


def test_anthropic_thinking_delta_is_output_with_nothing_to_forward() -> None:
    _, [piece] = translate_all(b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                               b'"delta":{"type":"thinking_delta","thinking":"hmm"}}\n\n')
    assert piece.model_output and piece.sse is None and piece.text == ""


def test_anthropic_error_event_is_an_error() -> None:
    _, [piece] = translate_all(b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                               b'"message":"Overloaded"}}\n\n')
    assert piece.error == "upstream error: overloaded_error: Overloaded"


def test_anthropic_completion_becomes_a_chat_completion() -> None:
    body = orjson.dumps({"id": "msg_2", "type": "message", "model": "claude-x", "stop_reason": "end_turn",
                         "content": [{"type": "text", "text": "Hi!"}],
                         "usage": {"input_tokens": 4, "output_tokens": 2}})
    completion = anthropic.DIALECT.parse_completion(body, "claude-x", "openai")
    data = orjson.loads(completion.body)
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "Hi!"}
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"]["total_tokens"] == 6 and completion.usage.completion_tokens == 2


@pytest.mark.parametrize(("body", "message"), [
    (b'{"error": {"message": "bad key"}}', "bad key"),
    (b'{"type": "error", "error": {"type": "x", "message": "overloaded"}}', "overloaded"),
    (b"<html>502 Bad Gateway</html>", "<html>502 Bad Gateway</html>"),
    (b"", "no error message"),
])
def test_error_message_reads_either_dialect_or_plain_text(body: bytes, message: str) -> None:
    assert error_message(body) == message
