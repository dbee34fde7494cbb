"""The OpenAI and Anthropic response shapes the mock speaks: pure bytes and dicts, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

# Multi-byte words on purpose: a relay that splits UTF-8 characters across
# reads, or measures text in bytes, shows up as a changed completion.
WORDS: Final[tuple[str, ...]] = (
    "Hello",
    " wörld",
    " 你好",
    " 🙂",
    " streaming",
    " tokens",
    " ça",
    " va",
    " naïve",
    " Ωmega",
    " relay",
    " ✓",
)


def mock_text(n: int) -> str:
    """The full completion the mock produces for n tokens."""
    return "".join(WORDS[i % len(WORDS)] for i in range(n))


# status -> (OpenAI error type, OpenAI code, Anthropic error type)
_ERROR_KINDS: Final[dict[int, tuple[str, str | None, str]]] = {
    400: ("invalid_request_error", None, "invalid_request_error"),
    401: ("invalid_request_error", "invalid_api_key", "authentication_error"),
    403: ("permission_error", None, "permission_error"),
    404: ("invalid_request_error", "model_not_found", "not_found_error"),
    429: ("rate_limit_error", "rate_limit_exceeded", "rate_limit_error"),
    529: ("server_error", None, "overloaded_error"),
}


def _error_kind(status: int) -> tuple[str, str | None, str]:
    if status in _ERROR_KINDS:
        return _ERROR_KINDS[status]
    if status >= 500:
        return ("server_error", None, "api_error")
    return ("invalid_request_error", None, "invalid_request_error")


def _words(content: Any) -> int:
    """Whitespace words in a string content or a list of text blocks."""
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        return sum(
            len(block["text"].split())
            for block in content
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        )
    return 0


def prompt_tokens(body: Mapping[str, Any]) -> int:
    """The prompt's size in tokens, counted as whitespace words of system and messages."""
    messages = body.get("messages")
    n = _words(body.get("system"))
    if isinstance(messages, list):
        n += sum(_words(m.get("content")) for m in messages if isinstance(m, dict))
    return n


@dataclass(frozen=True, slots=True)
class Job:
    """What one request asked for, after profile, knobs and fault are applied."""

    id: str
    created: int
    model: str
    tokens: int  # tokens the completion has (after max_tokens)
    cut_short: bool  # max_tokens ended it: "length" / "max_tokens"
    prompt_tokens: int
    include_usage: bool
    eol: bytes


class Dialect(Protocol):
    """One provider API's shapes. `headers` are the request's, looked up
    case-insensitively (as aiohttp's are)."""

    name: str
    id_prefix: str

    def precheck(self, headers: Mapping[str, str]) -> str | None: ...
    def api_key(self, headers: Mapping[str, str]) -> str | None: ...
    def error_body(self, status: int, message: str) -> dict[str, Any]: ...
    def include_usage(self, body: Mapping[str, Any]) -> bool: ...
    def full(self, job: Job) -> dict[str, Any]: ...
    def preamble(self, job: Job) -> bytes: ...
    def token(self, job: Job, i: int) -> bytes: ...
    def finish(self, job: Job) -> bytes: ...
    def error_event(self, job: Job) -> bytes: ...
    def stream_error_status(self) -> int: ...


class _OpenAI:
    name = "openai"
    id_prefix = "chatcmpl-mock"

    def precheck(self, headers: Mapping[str, str]) -> str | None:
        return None

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind, code, _ = _error_kind(status)
        return {"error": {"message": message, "type": kind, "code": code}}

    def include_usage(self, body: Mapping[str, Any]) -> bool:
        options = body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

    def _usage(self, job: Job) -> dict[str, int]:
        return {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.tokens,
            "total_tokens": job.prompt_tokens + job.tokens,
        }

    def _finish_reason(self, job: Job) -> str:
        return "length" if job.cut_short else "stop"

    def full(self, job: Job) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": job.id,
            "object": "chat.completion",
            "created": job.created,
            "model": job.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": mock_text(job.tokens)},
                    "logprobs": None,
                    "finish_reason": self._finish_reason(job),
                }
            ],
        }
        if job.include_usage:
            out["usage"] = self._usage(job)
        return out

    def _chunk(self, job: Job, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": job.id,
            "object": "chat.completion.chunk",
            "created": job.created,
            "model": job.model,
            "choices": choices,
        }
        # OpenAI puts "usage": null on every chunk once usage was asked for.
        if job.include_usage:
            chunk["usage"] = usage
        return b"data: " + orjson.dumps(chunk) + job.eol + job.eol

    def _delta(self, job: Job, delta: dict[str, str], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._chunk(job, [choice])

    def preamble(self, job: Job) -> bytes:
        return self._delta(job, {"role": "assistant", "content": ""})

    def token(self, job: Job, i: int) -> bytes:
        return self._delta(job, {"content": WORDS[i % len(WORDS)]})

    def finish(self, job: Job) -> bytes:
        out = self._delta(job, {}, self._finish_reason(job))
        if job.include_usage:
            out += self._chunk(job, [], self._usage(job))
        return out + b"data: [DONE]" + job.eol + job.eol

    def error_event(self, job: Job) -> bytes:
        return b"data: " + orjson.dumps(self.error_body(500, "The server had an error")) + job.eol + job.eol

    def stream_error_status(self) -> int:
        return 500


_EMPTY_TEXT: Final = {"type": "text", "text": ""}


class _Anthropic:
    name = "anthropic"
    id_prefix = "msg_mock"

    def precheck(self, headers: Mapping[str, str]) -> str | None:
        if not headers.get("anthropic-version"):
            return "anthropic-version: header is required"
        return None

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        return headers.get("x-api-key")

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"type": "error", "error": {"type": _error_kind(status)[2], "message": message}}

    def include_usage(self, body: Mapping[str, Any]) -> bool:
        return True

    def _stop_reason(self, job: Job) -> str:
        return "max_tokens" if job.cut_short else "end_turn"

    def full(self, job: Job) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": job.id,
            "type": "message",
            "role": "assistant",
            "model": job.model,
            "content": [{"type": "text", "text": mock_text(job.tokens)}],
            "stop_reason": self._stop_reason(job),
            "stop_sequence": None,
        }
        if job.include_usage:
            out["usage"] = {"input_tokens": job.prompt_tokens, "output_tokens": job.tokens}
        return out

    def _event(self, job: Job, data: dict[str, Any]) -> bytes:
        eol = job.eol
        return b"event: " + data["type"].encode() + eol + b"data: " + orjson.dumps(data) + eol + eol

    def preamble(self, job: Job) -> bytes:
        message: dict[str, Any] = {
            "id": job.id,
            "type": "message",
            "role": "assistant",
            "model": job.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        if job.include_usage:
            message["usage"] = {"input_tokens": job.prompt_tokens, "output_tokens": 1}
        return (
            self._event(job, {"type": "message_start", "message": message})
            + self._event(job, {"type": "content_block_start", "index": 0, "content_block": _EMPTY_TEXT})
            + self._event(job, {"type": "ping"})
        )

    def token(self, job: Job, i: int) -> bytes:
        delta = {"type": "text_delta", "text": WORDS[i % len(WORDS)]}
        return self._event(job, {"type": "content_block_delta", "index": 0, "delta": delta})

    def finish(self, job: Job) -> bytes:
        message_delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop_reason(job), "stop_sequence": None},
        }
        if job.include_usage:
            message_delta["usage"] = {"output_tokens": job.tokens}
        return (
            self._event(job, {"type": "content_block_stop", "index": 0})
            + self._event(job, message_delta)
            + self._event(job, {"type": "message_stop"})
        )

    def error_event(self, job: Job) -> bytes:
        error = {"type": "overloaded_error", "message": "Overloaded"}
        return self._event(job, {"type": "error", "error": error})

    def stream_error_status(self) -> int:
        return 529


OPENAI: Final = _OpenAI()
ANTHROPIC: Final = _Anthropic()
