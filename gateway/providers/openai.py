"""OpenAI-compatible providers (OpenAI, DeepSeek, any /chat/completions vendor).

For an OpenAI client, stream events are forwarded as the raw bytes the
upstream sent. Each event is still parsed once, for the text it carries and
for usage, because the log line needs both.

A Messages client's request is translated to Chat Completions and the answer
back into Anthropic events or a Messages `message` (gateway/messages/).
"""

from __future__ import annotations

import orjson

from ..config import Provider
from ..messages.from_chat import MessagesFromChat, to_message
from ..messages.to_chat import to_chat
from ..sse import Event
from . import (
    ChatRequest,
    Completion,
    Piece,
    UpstreamRequest,
    Usage,
    chunk_or_error,
    message_text,
    output_piece,
)


class OpenAIStream:
    def __init__(self) -> None:
        self.usage = Usage()

    def translate(self, event: Event) -> list[Piece]:
        if event.data == "[DONE]":
            return [Piece(sse=event.raw, done=True)]
        chunk = chunk_or_error(event.data)
        if isinstance(chunk, Piece):
            return [chunk]
        usage = chunk.get("usage")
        choices = chunk.get("choices")
        if usage is None and choices:  # the common event, a delta: one lookup each, one Piece
            delta = choices[0].get("delta") or {}
            text = delta.get("content")
            if text and type(text) is str:
                return [Piece(event.raw, text, True)]
        elif isinstance(usage, dict):
            self.usage = Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"))
        if not choices:
            return [Piece(sse=event.raw, usage_only=isinstance(usage, dict))]
        delta = choices[0].get("delta") or {}
        text = delta.get("content") or ""
        # DeepSeek-style reasoning_content and tool calls are output before any visible text.
        other = bool(delta.get("reasoning_content") or delta.get("tool_calls") or delta.get("refusal"))
        return [output_piece(event.raw, text if isinstance(text, str) else "", other)]


class OpenAIDialect:
    name = "openai"

    def build_request(self, provider: Provider, model: str, request: ChatRequest,
                      stream: bool) -> UpstreamRequest:
        chat = request.body if request.dialect == "openai" else to_chat(request.body, provider.name)
        body = dict(chat, model=model, stream=stream)
        if stream:
            # Always ask for usage so every request can be accounted; the relay
            # drops the usage-only chunk for clients that did not ask for it.
            body["stream_options"] = {**(chat.get("stream_options") or {}), "include_usage": True}
        else:
            body.pop("stream_options", None)
        headers = {"Content-Type": "application/json",
                   "Accept": "text/event-stream" if stream else "application/json"}
        if provider.api_key:
            headers["Authorization"] = f"Bearer {provider.api_key}"
        return UpstreamRequest(f"{provider.base_url}/chat/completions", headers, orjson.dumps(body))

    def stream_translator(self, model: str, client: str) -> OpenAIStream | MessagesFromChat:
        return MessagesFromChat(model) if client == "anthropic" else OpenAIStream()

    def parse_completion(self, body: bytes, model: str, client: str) -> Completion:
        if client == "anthropic":
            return to_message(body, model)
        data = orjson.loads(body)
        usage = data.get("usage") or {}
        choices = data.get("choices") or [{}]
        text = message_text((choices[0].get("message") or {}).get("content"))
        return Completion(body, text, Usage(usage.get("prompt_tokens"), usage.get("completion_tokens")))


DIALECT = OpenAIDialect()
