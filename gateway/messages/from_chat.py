"""A Chat Completions answer as a Messages answer: stream chunks as Anthropic events, a
chat.completion as a Messages `message`. For a Messages client served by an OpenAI-compatible
provider, so that the anthropic SDKs cannot tell which provider answered.

The stream, chunk by chunk:

    Chat Completions chunk                     Anthropic events
    the first chunk (usually the role chunk)   message_start (id "msg_" + the chunk's id, the
                                               provider's model, usage {0, 0}), then ping
    delta.content (or delta.refusal)           content_block_start (a text block, when none is
                                               open), content_block_delta text_delta
    delta.tool_calls, a new index              content_block_stop of the open block,
                                               content_block_start tool_use {id, name, input {}}
    delta.tool_calls[].function.arguments      content_block_delta input_json_delta
    delta.reasoning_content                    nothing (see below); it still counts as output
    finish_reason                              content_block_stop of the open block; the
                                               stop_reason waits for the end
    the usage chunk                            nothing yet: it is kept for message_delta
    data: [DONE]                               message_delta {stop_reason, usage {input_tokens,
                                               output_tokens}}, message_stop

    finish_reason stop / length / tool_calls / content_filter
      -> stop_reason end_turn / max_tokens / tool_use / refusal (stop_sequence is always null:
         a Chat Completions provider does not say whether a stop sequence ended the text)

Input tokens are known only at the end, so message_start says 0 and message_delta carries
the count (the anthropic SDKs take it from there into the final message). A provider that
sends no usage gets output_tokens estimated as one per output delta, like the log line.
Reasoning (DeepSeek's `reasoning_content`) is not forwarded: a Messages client asks for
thinking with `thinking`, which this path refuses (`to_chat.py`), and a thinking block
without Anthropic's signature would be refused by Claude when the client sends it back.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from ..providers import (
    Completion,
    Piece,
    Usage,
    chunk_or_error,
    message_text,
    output_piece,
)
from ..sse import Event, encode_event

STOP_REASONS: Final = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                       "function_call": "tool_use", "content_filter": "refusal"}


def _event(data: dict[str, Any]) -> bytes:
    return encode_event(orjson.dumps(data), event=data["type"])


class MessagesFromChat:
    """One Chat Completions stream, translated into Anthropic events as its chunks arrive."""

    def __init__(self, model: str) -> None:
        self.usage = Usage()
        self._model = model
        self._started = False
        self._open: int | None = None      # the index of the content block being written, if any
        self._blocks = 0                   # blocks started so far: the next block's index
        self._tools: dict[int, int] = {}   # a tool call's index in the chunks -> its block's index
        self._stop_reason = "end_turn"
        self._outputs = 0                  # output deltas received: the estimate without usage

    def translate(self, event: Event) -> list[Piece]:
        if event.data == "[DONE]":
            return self._start({}) + self._close() + self._finish()
        chunk = chunk_or_error(event.data)
        if isinstance(chunk, Piece):
            return [chunk]
        if isinstance(chunk.get("usage"), dict):
            self.usage = Usage(chunk["usage"].get("prompt_tokens"), chunk["usage"].get("completion_tokens"))
        pieces = self._start(chunk)
        choices = chunk.get("choices")
        if not choices:
            return pieces
        delta = choices[0].get("delta") or {}
        output = len(pieces)
        text = delta.get("content") or delta.get("refusal")
        if isinstance(text, str) and text:
            pieces += self._text(text)
        for call in delta.get("tool_calls") or []:
            pieces += self._tool_call(call)
        if delta.get("reasoning_content") and len(pieces) == output:
            pieces.append(Piece())  # the model is thinking: output, with nothing to forward
        if len(pieces) > output:
            # One output per delta received, whatever it became: commit, TTFT and the estimate.
            pieces[-1].model_output = True
            self._outputs += 1
        if choices[0].get("finish_reason"):
            pieces += self._close()
            self._stop_reason = STOP_REASONS.get(choices[0]["finish_reason"], "end_turn")
        return pieces

    def _start(self, chunk: dict[str, Any]) -> list[Piece]:
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {"id": f"msg_{chunk.get('id') or 'openai'}", "type": "message", "role": "assistant",
                   "model": chunk.get("model") or self._model, "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        return [Piece(sse=_event({"type": "message_start", "message": message})),
                Piece(sse=_event({"type": "ping"}))]

    def _begin(self, block: dict[str, Any]) -> list[Piece]:
        pieces = self._close()
        self._open, self._blocks = self._blocks, self._blocks + 1
        return pieces + [Piece(sse=_event({"type": "content_block_start", "index": self._open,
                                           "content_block": block}))]

    def _close(self) -> list[Piece]:
        if self._open is None:
            return []
        index, self._open = self._open, None
        return [Piece(sse=_event({"type": "content_block_stop", "index": index}))]

    def _text(self, text: str) -> list[Piece]:
        pieces: list[Piece] = []
        if self._open is None or self._open in self._tools.values():  # no block open, or a tool's
            pieces = self._begin({"type": "text", "text": ""})
        assert self._open is not None
        delta = {"type": "content_block_delta", "index": self._open, "delta": {"type": "text_delta", "text": text}}
        return pieces + [output_piece(_event(delta), text)]

    def _tool_call(self, call: dict[str, Any]) -> list[Piece]:
        function = call.get("function") or {}
        position = call.get("index", 0)
        pieces: list[Piece] = []
        if position not in self._tools:
            pieces = self._begin({"type": "tool_use", "id": call.get("id") or f"toolu_{position}",
                                  "name": function.get("name") or "", "input": {}})
            assert self._open is not None
            self._tools[position] = self._open
        arguments = function.get("arguments")
        if arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            pieces.append(Piece(sse=_event({"type": "content_block_delta", "index": self._tools[position],
                                            "delta": delta})))
        return pieces

    def _finish(self) -> list[Piece]:
        usage: dict[str, int] = {}
        if self.usage.prompt_tokens is not None:
            usage["input_tokens"] = self.usage.prompt_tokens
        known = self.usage.completion_tokens
        usage["output_tokens"] = known if known is not None else self._outputs
        delta = {"type": "message_delta", "delta": {"stop_reason": self._stop_reason, "stop_sequence": None},
                 "usage": usage}
        return [Piece(sse=_event(delta)), Piece(sse=_event({"type": "message_stop"}), done=True)]


def to_message(body: bytes, model: str) -> Completion:
    """A chat.completion as a Messages `message`. Raises on a body that is not one (the relay
    reports a malformed response)."""
    data = orjson.loads(body)
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    text = message_text(message.get("content")) or message.get("refusal") or ""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for call in message.get("tool_calls") or []:
        function = call["function"]
        content.append({"type": "tool_use", "id": call["id"], "name": function["name"],
                        "input": orjson.loads(function.get("arguments") or "{}")})
    usage = data.get("usage") or {}
    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
    out = {"id": f"msg_{data.get('id') or 'openai'}", "type": "message", "role": "assistant",
           "model": data.get("model") or model, "content": content,
           "stop_reason": STOP_REASONS.get(choice.get("finish_reason"), "end_turn"), "stop_sequence": None,
           "usage": {"input_tokens": p or 0, "output_tokens": c or 0}}
    return Completion(orjson.dumps(out), text, Usage(p, c))
