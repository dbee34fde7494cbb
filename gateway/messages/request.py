"""A Messages API request body, checked before anything goes upstream.

Each problem is a 400 whose message starts with the field's path, as
Anthropic's own messages do (`max_tokens: Field required`), so the client
sees what to fix instead of a provider's answer, which would differ with
the provider that served. The body is kept exactly as sent: an Anthropic
provider gets it with only the model replaced.

    >>> request = parse_messages_request({"model": "chat", "max_tokens": 64, "stream": True,
    ...     "metadata": {"user_id": "u-1"}, "messages": [{"role": "user", "content": "Hi"}]})
    >>> request.dialect, request.model, request.stream, request.user
    ('anthropic', 'chat', True, 'u-1')
    >>> parse_messages_request({"model": "chat", "messages": []}).model
    Traceback (most recent call last):
    ...
    gateway.errors.GatewayError: max_tokens: Field required
"""

from __future__ import annotations

from typing import Any, Final

from ..errors import GatewayError, invalid_request
from ..providers import ChatRequest

# Every top-level field this endpoint takes. Anything else is refused rather than passed on: it
# would reach an Anthropic provider but could not be translated for an OpenAI-compatible one, so
# the same request would behave differently depending on the provider that happened to serve it.
FIELDS: Final = frozenset({
    "model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature", "top_p", "top_k",
    "metadata", "tools", "tool_choice", "thinking",
})
TOOL_CHOICES: Final = frozenset({"auto", "any", "tool", "none"})


def _bad(path: str, problem: str) -> GatewayError:
    return invalid_request(f"{path}: {problem}", path)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict[str, Any], key: str, low: float, high: float) -> None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not low <= value <= high):
        raise _bad(key, f"must be a number from {low:g} to {high:g}")


def _string_list(body: dict[str, Any], key: str) -> None:
    value = body.get(key)
    if value is not None and not (isinstance(value, list) and all(isinstance(s, str) for s in value)):
        raise _bad(key, "must be an array of strings")


def _text_blocks(value: Any, path: str) -> None:
    if not isinstance(value, list):
        raise _bad(path, "must be a string or an array of text blocks")
    for i, block in enumerate(value):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise _bad(f"{path}.{i}", 'must be a text block: {"type": "text", "text": "..."}')


def _block(block: Any, role: str, path: str) -> None:
    """The blocks the gateway reads are checked; other types are the provider's to judge (an
    OpenAI-compatible one refuses them by name, `to_chat.py`)."""
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _bad(path, "must be a content block: an object with a type")
    kind = block["type"]
    if kind == "text" and not isinstance(block.get("text"), str):
        raise _bad(f"{path}.text", "must be a string")
    if kind == "image" and not isinstance(block.get("source"), dict):
        raise _bad(f"{path}.source", "must be an object")
    if kind == "tool_use":
        if role != "assistant":
            raise _bad(f"{path}.type", "tool_use blocks belong in assistant messages")
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            raise _bad(path, "a tool_use block needs a string id and name")
        if not isinstance(block.get("input"), dict):
            raise _bad(f"{path}.input", "must be an object")
    if kind == "tool_result":
        if role != "user":
            raise _bad(f"{path}.type", "tool_result blocks belong in user messages")
        if not isinstance(block.get("tool_use_id"), str):
            raise _bad(f"{path}.tool_use_id", "must be a string")
        content = block.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _bad(f"{path}.content", "must be a string or an array of content blocks")


def _messages(value: Any) -> None:
    if not isinstance(value, list):
        raise _bad("messages", "must be an array of messages")
    if not value:
        raise _bad("messages", "at least one message is required")
    previous = None
    for i, message in enumerate(value):
        path = f"messages.{i}"
        if not isinstance(message, dict):
            raise _bad(path, "must be an object with a role and content")
        extra = sorted(set(message) - {"role", "content"})
        if extra:
            raise _bad(f"{path}.{extra[0]}", "Extra inputs are not permitted")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise _bad(f"{path}.role", 'must be "user" or "assistant" (a system prompt goes in `system`)')
        # Anthropic merges consecutive turns of one role; an OpenAI-compatible provider would see two
        # messages. Held to strict alternation, a conversation means the same to either.
        if previous is None and role != "user":
            raise _bad(f"{path}.role", 'the first message must use the "user" role')
        if role == previous:
            raise _bad(f"{path}.role", f'roles must alternate between "user" and "assistant", but found '
                                       f'two "{role}" messages in a row')
        previous = role
        content = message.get("content")
        if isinstance(content, list):
            for j, block in enumerate(content):
                _block(block, role, f"{path}.content.{j}")
        elif not isinstance(content, str):
            raise _bad(f"{path}.content", "must be a string or an array of content blocks")


def _metadata(value: Any) -> str | None:
    """The sticky user key, `metadata.user_id`."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad("metadata", "must be an object")
    extra = sorted(set(value) - {"user_id"})
    if extra:
        raise _bad(f"metadata.{extra[0]}", "Extra inputs are not permitted")
    user = value.get("user_id")
    if user is not None and not isinstance(user, str):
        raise _bad("metadata.user_id", "must be a string")
    return user or None


def _tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools", "must be an array of tools")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise _bad(f"tools.{i}", "must be an object with a string name")
            if tool.get("type", "custom") == "custom" and not isinstance(tool.get("input_schema"), dict):
                raise _bad(f"tools.{i}.input_schema", "must be a JSON Schema object")
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICES:
            raise _bad("tool_choice.type", f"must be one of {', '.join(sorted(TOOL_CHOICES))}")
        if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
            raise _bad("tool_choice.name", "must name the tool")


def parse_messages_request(body: Any) -> ChatRequest:
    """A Messages API request body -> the request, kept as sent. Raises a 400 naming the field."""
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object")
    extra = sorted(set(body) - FIELDS)
    if extra:
        raise _bad(extra[0], "Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _bad("model", "Field required: the public model (route) name")
    if "max_tokens" not in body:
        raise _bad("max_tokens", "Field required")
    if not _is_int(body["max_tokens"]) or body["max_tokens"] < 1:
        raise _bad("max_tokens", "must be a positive integer")
    _messages(body.get("messages"))
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        _text_blocks(system, "system")
    if not isinstance(body.get("stream", False), bool):
        raise _bad("stream", "must be true or false")
    _string_list(body, "stop_sequences")
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    top_k = body.get("top_k")
    if top_k is not None and (not _is_int(top_k) or top_k < 0):
        raise _bad("top_k", "must be a non-negative integer")
    thinking = body.get("thinking")
    if thinking is not None and not (isinstance(thinking, dict) and isinstance(thinking.get("type"), str)):
        raise _bad("thinking", "must be an object with a type")
    _tools(body)
    user = _metadata(body.get("metadata"))
    return ChatRequest("anthropic", body, body["model"], body.get("stream") is True, user)
