"""Client request bodies checked before anything goes upstream.

Each problem becomes a 400 in the OpenAI error shape naming the offending
parameter, so a client sees what to fix instead of a provider's confusing
answer (or a gateway stack trace). Fields we do not check are passed through
to OpenAI-compatible providers unchanged.
"""

from __future__ import annotations

from typing import Any

from .errors import invalid_request
from .providers import ChatRequest

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


def _number(body: dict[str, Any], key: str, low: float, high: float) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise invalid_request(f"{key} must be a number from {low:g} to {high:g}", key)


def _positive_int(body: dict[str, Any], key: str) -> None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise invalid_request(f"{key} must be a positive integer", key)


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise invalid_request("messages must be a non-empty array", "messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise invalid_request(f"messages[{i}] must be an object", f"messages[{i}]")
        if m.get("role") not in ROLES:
            raise invalid_request(f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}",
                                  f"messages[{i}].role")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise invalid_request(f"messages[{i}].content must be a string or an array of parts",
                                  f"messages[{i}].content")
        if isinstance(content, list) and not all(isinstance(p, dict) and isinstance(p.get("type"), str)
                                                 for p in content):
            raise invalid_request(f"messages[{i}].content parts must be objects with a type",
                                  f"messages[{i}].content")
    return value


def parse_chat_request(body: Any) -> ChatRequest:
    """An OpenAI Chat Completions request body."""
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise invalid_request("model is required and must be a string", "model")
    return _openai_request(_chat_fields(body))


def _openai_request(chat: dict[str, Any]) -> ChatRequest:
    return ChatRequest("openai", chat, chat.get("model"), bool(chat.get("stream")), chat.get("user"))


def _chat_fields(body: dict[str, Any]) -> dict[str, Any]:
    _messages(body.get("messages"))
    if not isinstance(body.get("stream", False), bool):
        raise invalid_request("stream must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise invalid_request("stream_options must be an object with a boolean include_usage",
                                  "stream_options")
        if not body.get("stream"):
            raise invalid_request("stream_options is only allowed when stream is true", "stream_options")
    _positive_int(body, "max_tokens")
    _positive_int(body, "max_completion_tokens")
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    if body.get("n", 1) != 1:
        raise invalid_request("n must be 1: the gateway relays a single choice", "n")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or
                                 (isinstance(stop, list) and len(stop) <= 4
                                  and all(isinstance(s, str) for s in stop))):
        raise invalid_request("stop must be a string or an array of at most 4 strings", "stop")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise invalid_request("user must be a string", "user")
    return body


def parse_stream_chat_request(body: Any) -> ChatRequest:
    """The browser stream: `{"prompt": "..."}` or `{"messages": [...]}`, optional model and user.
    Without a model, the caller routes to the configured default."""
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object")
    unknown = set(body) - {"prompt", "messages", "model", "user", "max_tokens", "temperature"}
    if unknown:
        raise invalid_request(f"Unknown field(s): {', '.join(sorted(unknown))}", sorted(unknown)[0])
    prompt, messages = body.get("prompt"), body.get("messages")
    if (prompt is None) == (messages is None):
        raise invalid_request("Send exactly one of prompt (a string) or messages (an array)", "prompt")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise invalid_request("prompt must be a non-empty string", "prompt")
    chat: dict[str, Any] = {
        "messages": _messages(messages) if messages is not None else [{"role": "user", "content": prompt}],
        "stream": True,
    }
    if "model" in body:
        if not isinstance(body["model"], str) or not body["model"]:
            raise invalid_request("model must be a non-empty string", "model")
        chat["model"] = body["model"]
    for key in ("user", "max_tokens", "temperature"):
        if body.get(key) is not None:
            chat[key] = body[key]
    return _openai_request(_chat_fields(chat))
