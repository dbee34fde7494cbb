"""Anthropic's Messages API: as it is for Messages clients, translated for OpenAI ones.

A Messages client's body goes up as it came, with the arm's model; the
events come back as the raw bytes the provider sent, each read once for its
usage, its output and the end of the stream (`AnthropicRelay`).

For an OpenAI client the request is translated: system/developer messages
become `system`, `stop` becomes `stop_sequences`, `max_tokens` gets the
provider's default when absent (the Messages API requires it). Stream events
become `chat.completion.chunk` events ending in `data: [DONE]`, so an OpenAI
client cannot tell the difference (`AnthropicStream`).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ..config import Provider
from ..errors import invalid_request
from ..sse import DONE, Event, encode_event
from . import (
    ChatRequest,
    Completion,
    Piece,
    UpstreamRequest,
    Usage,
    message_text,
    output_piece,
)

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "refusal": "content_filter"}


def to_messages_body(provider: Provider, model: str, chat: dict[str, Any], stream: bool) -> dict[str, Any]:
    if chat.get("tools") or chat.get("functions"):
        raise invalid_request("tools are not supported by this gateway for Anthropic providers yet", "tools")
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(chat["messages"]):
        role = m["role"]
        if role in ("system", "developer"):
            system.append(message_text(m.get("content")))
        elif role in ("user", "assistant"):
            messages.append({"role": role, "content": message_text(m.get("content"))})
        else:
            raise invalid_request(f"messages[{i}].role {role!r} is not supported for Anthropic providers",
                                  f"messages[{i}].role")
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": chat.get("max_completion_tokens") or chat.get("max_tokens") or provider.default_max_tokens,
        "stream": stream,
    }
    if system:
        body["system"] = "\n\n".join(system)
    for key in ("temperature", "top_p"):
        if chat.get(key) is not None:
            body[key] = chat[key]
    stop = chat.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if chat.get("user"):
        body["metadata"] = {"user_id": chat["user"]}
    return body


# --- what an event means, whoever it is written for --------------------------------

def _data(event: Event) -> dict[str, Any] | None:
    """The event's JSON object ({} for JSON of another kind); None when it is not JSON."""
    try:
        data = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else {}


def _read_usage(usage: Usage, kind: str | None, data: dict[str, Any]) -> None:
    if kind == "message_start":
        # output_tokens here is a running placeholder; the count comes with message_delta.
        usage.prompt_tokens = ((data.get("message") or {}).get("usage") or {}).get("input_tokens")
        usage.completion_tokens = None
    elif kind == "message_delta":
        counts = data.get("usage") or {}
        if counts.get("output_tokens") is not None:
            usage.completion_tokens = counts["output_tokens"]
        if counts.get("input_tokens") is not None:
            usage.prompt_tokens = counts["input_tokens"]


def _delta_output(data: dict[str, Any]) -> tuple[str, bool]:
    """A content_block_delta's text, and whether it is output without text (thinking, tool input)."""
    delta = data.get("delta") or {}
    return delta.get("text") or "", delta.get("type") in ("thinking_delta", "input_json_delta")


def _error(data: dict[str, Any]) -> str:
    err = data.get("error") or {}
    return f"upstream error: {err.get('type', 'error')}: {err.get('message', '')}"


NOT_JSON = "upstream sent an event that is not JSON"


class AnthropicRelay:
    """The stream for a Messages client: every event is the raw bytes the provider sent. Only an
    error event is the gateway's to render (the stream ends with the gateway's own error event)."""

    def __init__(self) -> None:
        self.usage = Usage()

    def translate(self, event: Event) -> list[Piece]:
        data = _data(event)
        if data is None:
            return [Piece(error=NOT_JSON)]
        kind = data.get("type")
        if kind == "error":
            return [Piece(error=_error(data))]
        _read_usage(self.usage, kind, data)
        if kind == "content_block_delta":
            text, other = _delta_output(data)
            return [output_piece(event.raw, text, other)]
        # message_start, content_block_start/stop, ping, message_delta, and event types added later
        return [Piece(sse=event.raw, done=kind == "message_stop")]


class AnthropicStream:
    """The stream for an OpenAI client: events translated to `chat.completion.chunk`s."""

    def __init__(self, model: str) -> None:
        self.usage = Usage()
        self._model = model
        self._id = "chatcmpl-anthropic"
        self._created = int(time.time())

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return encode_event(orjson.dumps({
            "id": self._id, "object": "chat.completion.chunk", "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }))

    def _usage_chunk(self) -> bytes:
        p, c = self.usage.prompt_tokens or 0, self.usage.completion_tokens or 0
        return encode_event(orjson.dumps({
            "id": self._id, "object": "chat.completion.chunk", "created": self._created,
            "model": self._model, "choices": [],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
        }))

    def translate(self, event: Event) -> list[Piece]:
        data = _data(event)
        if data is None:
            return [Piece(error=NOT_JSON)]
        kind = data.get("type")
        _read_usage(self.usage, kind, data)
        if kind == "content_block_delta":
            text, other = _delta_output(data)
            if text:
                return [output_piece(self._chunk({"content": text}), text)]
            if other:
                return [Piece(model_output=True)]  # the model is working; nothing to show an OpenAI client yet
            return []
        if kind == "message_start":
            message = data.get("message") or {}
            self._id = f"chatcmpl-{message.get('id', 'anthropic')}"
            self._model = message.get("model") or self._model
            return [Piece(sse=self._chunk({"role": "assistant", "content": ""}))]
        if kind == "message_delta":
            reason = str((data.get("delta") or {}).get("stop_reason"))
            return [Piece(sse=self._chunk({}, FINISH_REASONS.get(reason, "stop")))]
        if kind == "message_stop":
            pieces = [Piece(sse=self._usage_chunk(), usage_only=True)] if self.usage.known else []
            return pieces + [Piece(sse=DONE, done=True)]
        if kind == "error":
            return [Piece(error=_error(data))]
        return []  # ping, content_block_start/stop, and event types added later


class AnthropicDialect:
    name = "anthropic"

    def build_request(self, provider: Provider, model: str, request: ChatRequest,
                      stream: bool) -> UpstreamRequest:
        headers = {"Content-Type": "application/json", "anthropic-version": provider.anthropic_version,
                   "Accept": "text/event-stream" if stream else "application/json"}
        if provider.api_key:
            headers["x-api-key"] = provider.api_key
        if request.dialect == "anthropic":
            # The client's own Messages body, byte-faithful in every field but the model: top_k,
            # system blocks, cache_control, tools and thinking reach the provider as they were sent.
            body = dict(request.body, model=model)
        else:
            body = to_messages_body(provider, model, request.body, stream)
        return UpstreamRequest(f"{provider.base_url}/v1/messages", headers, orjson.dumps(body))

    def stream_translator(self, model: str, client: str) -> AnthropicRelay | AnthropicStream:
        return AnthropicRelay() if client == "anthropic" else AnthropicStream(model)

    def parse_completion(self, body: bytes, model: str, client: str) -> Completion:
        data = orjson.loads(body)
        text = "".join(b.get("text", "") for b in data.get("content") or [] if b.get("type") == "text")
        usage = data.get("usage") or {}
        p, c = usage.get("input_tokens"), usage.get("output_tokens")
        if client == "anthropic":
            return Completion(body, text, Usage(p, c))  # the provider's own message, as it is
        completion = {
            "id": f"chatcmpl-{data.get('id', 'anthropic')}", "object": "chat.completion",
            "created": int(time.time()), "model": data.get("model") or model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None,
                         "finish_reason": FINISH_REASONS.get(data.get("stop_reason"), "stop")}],
            "usage": {"prompt_tokens": p or 0, "completion_tokens": c or 0,
                      "total_tokens": (p or 0) + (c or 0)},
        }
        return Completion(orjson.dumps(completion), text, Usage(p, c))


DIALECT = AnthropicDialect()
