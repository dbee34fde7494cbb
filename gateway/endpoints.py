"""The chat endpoints, as a table: each one's path, request parser and renderer.

The request path is the same for all of them (`app._handle`); what differs
is how the client's body is read and how the stream is written back.

    >>> [(e.name, e.path) for e in ENDPOINTS]
    [('chat_completions', '/v1/chat/completions'), ('stream_chat', '/v1/stream/chat')]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .renderers import ChatCompletionsRenderer, Renderer, TokenStreamRenderer
from .validation import parse_chat_request, parse_stream_chat_request


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # the log line's `endpoint`
    path: str
    parse: Callable[[Any], dict[str, Any]]  # the client's JSON -> an OpenAI-shaped chat request
    renderer: Callable[[dict[str, Any]], Renderer]  # for a streamed answer to that request


ENDPOINTS = (
    Endpoint("chat_completions", "/v1/chat/completions", parse_chat_request, ChatCompletionsRenderer.for_request),
    Endpoint("stream_chat", "/v1/stream/chat", parse_stream_chat_request, TokenStreamRenderer.for_request),
)
