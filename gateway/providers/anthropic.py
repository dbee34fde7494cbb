"""Anthropic's Messages API, translated to and from OpenAI Chat Completions.

Requests: system/developer messages become `system`, `stop` becomes
`stop_sequences`, `max_tokens` gets the provider's default when absent (the
Messages API requires it). Stream events become `chat.completion.chunk`
events ending in `data: [DONE]`, so an OpenAI client cannot tell the
difference.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from ..config import Provider
from ..errors import invalid_request
from ..sse import DONE, Event, encode_event
from . import ChatRequest, Completion, Piece, UpstreamRequest, Usage, message_text, output_piece

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


class AnthropicStream:
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
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return [Piece(error="upstream sent an event that is not JSON")]
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            text = delta.get("text") or ""
            if text:
                return [output_piece(self._chunk({"content": text}), text)]
            if delta.get("type") in ("thinking_delta", "input_json_delta"):
                return [Piece(model_output=True)]  # the model is working; nothing to show an OpenAI client yet
            return []
        if kind == "message_start":
            message = data.get("message") or {}
            self._id = f"chatcmpl-{message.get('id', 'anthropic')}"
            self._model = message.get("model") or self._model
            usage = message.get("usage") or {}
            # output_tokens here is a running placeholder; the count comes with message_delta.
            self.usage = Usage(usage.get("input_tokens"), None)
            return [Piece(sse=self._chunk({"role": "assistant", "content": ""}))]
        if kind == "message_delta":
            usage = data.get("usage") or {}
            if usage.get("output_tokens") is not None:
                self.usage.completion_tokens = usage["output_tokens"]
            if usage.get("input_tokens") is not None:
                self.usage.prompt_tokens = usage["input_tokens"]
            reason = str((data.get("delta") or {}).get("stop_reason"))
            return [Piece(sse=self._chunk({}, FINISH_REASONS.get(reason, "stop")))]
        if kind == "message_stop":
            pieces = [Piece(sse=self._usage_chunk(), usage_only=True)] if self.usage.known else []
            return pieces + [Piece(sse=DONE, done=True)]
        if kind == "error":
            err = data.get("error") or {}
            return [Piece(error=f"upstream error: {err.get('type', 'error')}: {err.get('message', '')}")]
        return []  # ping, content_block_start/stop, and event types added later


class AnthropicDialect:
    name = "anthropic"

    def build_request(self, provider: Provider, model: str, request: ChatRequest,
                      stream: bool) -> UpstreamRequest:
        headers = {"Content-Type": "application/json", "anthropic-version": provider.anthropic_version,
                   "Accept": "text/event-stream" if stream else "application/json"}
        if provider.api_key:
            headers["x-api-key"] = provider.api_key
        body = to_messages_body(provider, model, request.body, stream)
        return UpstreamRequest(f"{provider.base_url}/v1/messages", headers, orjson.dumps(body))

    def stream_translator(self, model: str, client: str) -> AnthropicStream:
        return AnthropicStream(model)

    def parse_completion(self, body: bytes, model: str, client: str) -> Completion:
        data = orjson.loads(body)
        text = "".join(b.get("text", "") for b in data.get("content") or [] if b.get("type") == "text")
        usage = data.get("usage") or {}
        p, c = usage.get("input_tokens"), usage.get("output_tokens")
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
