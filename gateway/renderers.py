"""Renderers: how one endpoint formats a stream for its clients. Bytes only.

A renderer turns each `Piece` (what an upstream event means) into the bytes
its endpoint's clients read, and renders the stream's two possible endings.
It knows nothing of sockets, timing or accounting.

    >>> from gateway.providers import Piece, Usage
    >>> TokenStreamRenderer().render(Piece(text="Hi", model_output=True))
    b'data: {"token":"Hi"}\\n\\n'
    >>> TokenStreamRenderer().closing(Usage(3, 1), ttft_ms=12.5, latency_ms=40.0)
    b'event: done\\ndata: {"usage":{"prompt_tokens":3,"completion_tokens":1},"ttft_ms":12.5,"latency_ms":40.0}\\n\\n'
"""

from __future__ import annotations

from typing import Protocol

import orjson

from .errors import GatewayError
from .messages.errors import error_event
from .providers import ChatRequest, Piece, Usage
from .sse import encode_event


class Renderer(Protocol):
    def render(self, piece: Piece) -> bytes | None: ...
    def error(self, error: GatewayError) -> bytes: ...
    def closing(self, usage: Usage, *, ttft_ms: float | None, latency_ms: float) -> bytes: ...


class ChatCompletionsRenderer:
    """OpenAI `chat.completion.chunk` events, as the piece carries them: the upstream's raw
    bytes from an OpenAI-dialect provider, translated chunks from any other."""

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage

    @classmethod
    def for_request(cls, request: ChatRequest) -> ChatCompletionsRenderer:
        return cls(bool((request.body.get("stream_options") or {}).get("include_usage")))

    def render(self, piece: Piece) -> bytes | None:
        if piece.usage_only and not self.include_usage:
            return None  # the gateway asked for usage for its own accounting; the client did not
        return piece.sse

    def error(self, error: GatewayError) -> bytes:
        return encode_event(error.json())  # the OpenAI SDKs raise APIError on it

    def closing(self, usage: Usage, *, ttft_ms: float | None, latency_ms: float) -> bytes:
        return b""  # `data: [DONE]` is the upstream's own terminator, already rendered


class TokenStreamRenderer:
    """The browser stream: `data: {"token": ...}` events, then `event: done` (or `event: error`)."""

    @classmethod
    def for_request(cls, request: ChatRequest) -> TokenStreamRenderer:
        return cls()

    def render(self, piece: Piece) -> bytes | None:
        return encode_event(orjson.dumps({"token": piece.text})) if piece.text else None

    def error(self, error: GatewayError) -> bytes:
        return encode_event(error.json(), event="error")

    def closing(self, usage: Usage, *, ttft_ms: float | None, latency_ms: float) -> bytes:
        return encode_event(orjson.dumps({
            "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens},
            "ttft_ms": ttft_ms, "latency_ms": latency_ms,
        }), event="done")


class MessagesRenderer:
    """Anthropic Messages events, as the piece carries them: the upstream's raw bytes from an
    Anthropic provider, translated events from any other; a failure as an `error` event."""

    @classmethod
    def for_request(cls, request: ChatRequest) -> MessagesRenderer:
        return cls()

    def render(self, piece: Piece) -> bytes | None:
        return piece.sse

    def error(self, error: GatewayError) -> bytes:
        return error_event(error)  # the anthropic SDKs raise APIStatusError on it

    def closing(self, usage: Usage, *, ttft_ms: float | None, latency_ms: float) -> bytes:
        return b""  # `message_stop` is the stream's own end, already rendered
