"""Upstream dialects: how to ask a provider and how to read its answer.

A dialect knows nothing of the client connection or of timing: it builds the
upstream request from the client's request and turns each upstream SSE event
into a `Piece` that says what to forward and what the event means for
accounting. The relay does the I/O.

Clients speak a dialect too (`ChatRequest.dialect`): OpenAI Chat Completions
or Anthropic Messages. When the client and the provider speak the same one,
the body goes up and the events come back as they are (only the model name
is the arm's); otherwise the provider's dialect translates both ways.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from ..config import Provider
from ..sse import Event


@dataclass(slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def known(self) -> bool:
        return self.completion_tokens is not None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A client's chat request, as its endpoint read it: what routing needs, and the body to send."""

    dialect: str                # the API the client speaks ("openai" or "anthropic"): its body is in this
                                # dialect, and so are the events and completions it gets back
    body: dict[str, Any]        # the checked body, as the client sent it (built from it for the browser stream)
    model: str | None           # the public model (route) it names; None: the configured default
    stream: bool
    user: str | None = None     # the sticky user key carried in the body, if any


@dataclass(slots=True)
class Piece:
    """What one upstream event means."""

    sse: bytes | None = None    # the event as SSE bytes in the client's dialect, if it has any there
    text: str = ""              # content text the event carries
    model_output: bool = False  # carries model output of any kind: text, reasoning, tool calls
    usage_only: bool = False    # carries only usage: forwarded only if the client asked
    done: bool = False          # the stream's proper terminator
    error: str | None = None    # the upstream reported an error inside the stream


def output_piece(sse: bytes | None, text: str, other_output: bool = False) -> Piece:
    """A piece of model output. Reasoning and tool-call deltas count as output (the
    stream is alive and committed) though they carry no visible text."""
    return Piece(sse=sse, text=text, model_output=bool(text) or other_output)


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Completion:
    """A non-streamed answer, already in the client's dialect (a chat.completion, or a Messages message)."""

    body: bytes
    text: str
    usage: Usage = field(default_factory=Usage)

    def tokens(self) -> tuple[Usage, str]:
        """The tokens to account: the provider's usage, if it sent one."""
        return self.usage, "upstream" if self.usage.known else "none"


class StreamTranslator(Protocol):
    usage: Usage

    def translate(self, event: Event) -> list[Piece]: ...


class Dialect(Protocol):
    """One upstream API. `client` is the dialect the client speaks (`ChatRequest.dialect`): what the
    translator's pieces and the completion's body are written in."""

    name: str

    def build_request(self, provider: Provider, model: str, request: ChatRequest,
                      stream: bool) -> UpstreamRequest: ...

    def stream_translator(self, model: str, client: str) -> StreamTranslator: ...

    def parse_completion(self, body: bytes, model: str, client: str) -> Completion: ...


def chunk_or_error(data: str) -> dict[str, Any] | Piece:
    """A chat.completion.chunk event's JSON object, or the error piece that stands for it.

        >>> chunk_or_error('{"error": {"message": "overloaded"}}').error
        'upstream error: overloaded'
    """
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return Piece(error="upstream sent an event that is not JSON")
    if not isinstance(chunk, dict):
        return Piece(error="upstream sent an event that is not a JSON object")
    if "error" in chunk:
        err = chunk["error"]
        return Piece(error=f"upstream error: {err.get('message') if isinstance(err, dict) else err}")
    return chunk


def error_message(body: bytes) -> str:
    """The message of an upstream error body, in either dialect's shape."""
    try:
        data = orjson.loads(body)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
    except orjson.JSONDecodeError:
        pass
    text = body[:200].decode("utf-8", "replace").strip()
    return text or "no error message"


def message_text(content: Any) -> str:
    """Text of an OpenAI message content: a string or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text"
                   and isinstance(p.get("text"), str))


_DIALECTS: dict[str, Dialect] = {}


def dialect_for(name: str) -> Dialect:
    if not _DIALECTS:  # on first use: the dialects' modules import this one
        from . import anthropic, openai

        _DIALECTS.update(openai=openai.DIALECT, anthropic=anthropic.DIALECT)
    return _DIALECTS[name]
