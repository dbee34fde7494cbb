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
INT32_MAX = 2**31 - 1
INT64 = (-(2**63), 2**63 - 1)
MAX_USER_CHARS = 512


def _number(body: dict[str, Any], key: str, low: float, high: float) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise invalid_request(f"{key} must be a number from {low:g} to {high:g}", key)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(body: dict[str, Any], key: str) -> None:
    value = body.get(key)
    if value is not None and (not _is_int(value) or not 1 <= value <= INT32_MAX):
        raise invalid_request(f"{key} must be an integer from 1 to {INT32_MAX}", key)


def _typed(body: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> None:
    value = body.get(key)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise invalid_request(f"{key} must be {what}", key)


def _tools(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise invalid_request("tools must be an array of tool objects", "tools")
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict)
                or not isinstance(function.get("name"), str) or not function["name"]):
            raise invalid_request(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                                  f"tools[{i}]")
        if function.get("parameters") is not None and not isinstance(function["parameters"], dict):
            raise invalid_request(f"tools[{i}].function.parameters must be an object", f"tools[{i}].function")


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
        if isinstance(content, list):
            for j, part in enumerate(content):
                _content_part(part, f"messages[{i}].content[{j}]")
    return value


def _content_part(part: Any, where: str) -> None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise invalid_request(f"{where} must be an object with a type", where)
    if part["type"] == "text" and not isinstance(part.get("text"), str):
        raise invalid_request(f"{where}.text must be a string", f"{where}.text")
    if part["type"] == "image_url":
        image = part.get("image_url")
        if not isinstance(image, dict) or not isinstance(image.get("url"), str):
            raise invalid_request(f"{where}.image_url must be an object with a url string", f"{where}.image_url")


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
    _number(body, "presence_penalty", -2, 2)
    _number(body, "frequency_penalty", -2, 2)
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise invalid_request("n must be 1: the gateway relays a single choice", "n")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not INT64[0] <= seed <= INT64[1]):
        raise invalid_request("seed must be a 64-bit integer", "seed")
    _tools(body.get("tools"))
    _typed(body, "tool_choice", (str, dict), "a string or an object")
    _typed(body, "parallel_tool_calls", bool, "true or false")
    _typed(body, "response_format", dict, "an object")
    _typed(body, "metadata", dict, "an object")
    _typed(body, "logit_bias", dict, "an object")
    _typed(body, "logprobs", bool, "true or false")
    top_logprobs = body.get("top_logprobs")
    if top_logprobs is not None and (not _is_int(top_logprobs) or not 0 <= top_logprobs <= 20):
        raise invalid_request("top_logprobs must be an integer from 0 to 20", "top_logprobs")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or
                                 (isinstance(stop, list) and len(stop) <= 4
                                  and all(isinstance(s, str) for s in stop))):
        raise invalid_request("stop must be a string or an array of at most 4 strings", "stop")
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > MAX_USER_CHARS):
        raise invalid_request(f"user must be a string of at most {MAX_USER_CHARS} characters", "user")
    return body


def parse_stream_chat_request(body: Any) -> ChatRequest:
    """The browser stream: `{"prompt": "..."}` or `{"messages": [...]}`, optional model and user.
    Without a model, the caller routes to the configured default."""
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object")
    unknown = set(body) - {"prompt", "messages", "model", "user", "max_tokens", "temperature", "resumable"}
    if unknown:
        raise invalid_request(f"Unknown field(s): {', '.join(sorted(unknown))}", sorted(unknown)[0])
    if not isinstance(body.get("resumable", False), bool):
        raise invalid_request("resumable must be true or false", "resumable")
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
