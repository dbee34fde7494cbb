"""The chat endpoints, as a table: each one's path, request parser, renderer and error shape.

The request path is the same for all of them (`app._handle`); what differs
is how the client's body is read, how the answer is written back, and the
shape its errors take.

    >>> [(e.name, e.path) for e in ENDPOINTS]
    [('chat_completions', '/v1/chat/completions'), ('stream_chat', '/v1/stream/chat'), ('messages', '/v1/messages')]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import GatewayError
from .messages.errors import error_body as anthropic_error_body
from .messages.request import parse_messages_request
from .providers import ChatRequest
from .renderers import (
    ChatCompletionsRenderer,
    MessagesRenderer,
    Renderer,
    TokenStreamRenderer,
)
from .validation import parse_chat_request, parse_stream_chat_request


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # the log line's `endpoint`
    path: str
    parse: Callable[[Any], ChatRequest]  # the client's JSON -> the request, checked
    renderer: Callable[[ChatRequest], Renderer]  # for a streamed answer to that request
    error_body: Callable[[GatewayError], bytes]  # a failure answered with a status, in this endpoint's shape


ENDPOINTS = (
    Endpoint("chat_completions", "/v1/chat/completions", parse_chat_request, ChatCompletionsRenderer.for_request,
             GatewayError.json),
    Endpoint("stream_chat", "/v1/stream/chat", parse_stream_chat_request, TokenStreamRenderer.for_request,
             GatewayError.json),
    Endpoint("messages", "/v1/messages", parse_messages_request, MessagesRenderer.for_request,
             anthropic_error_body),
)

BY_PATH = {endpoint.path: endpoint for endpoint in ENDPOINTS}
