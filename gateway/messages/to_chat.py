"""A Messages request as a Chat Completions request, for an OpenAI-compatible provider.

What both APIs can say is translated; what Chat Completions cannot say is
refused with a 400 naming the field, never dropped, so a fallback from an
Anthropic provider to an OpenAI-compatible one never quietly answers a
different question. The request was checked first (`request.py`).

    Messages                                   Chat Completions
    system (a string, or text blocks)          a first `system` message
    content: a string, or text blocks          content: the string, or the blocks' text joined
    image block (base64 or url source)         image_url part (a data: URL, or the URL)
    tool_use blocks (assistant)                tool_calls, the input as JSON arguments
    tool_result block (user)                   a `tool` message with tool_call_id, before the
                                               rest of the user turn; is_error as "Error: " + text
    max_tokens, temperature, top_p, stream     the same
    top_k                                      top_k (not in OpenAI's API: passed on, like any
                                               field the OpenAI endpoint does not know; honoured
                                               by vLLM and others, refused by some)
    stop_sequences                             stop
    metadata.user_id                           user
    tools (custom)                             tools of type function: input_schema -> parameters
    tool_choice auto / any / tool / none       "auto" / "required" / the named function / "none"
    tool_choice.disable_parallel_tool_use      parallel_tool_calls: false
    thinking {"type": "disabled"}              nothing: it is the default
    cache_control, anywhere                    nothing: a caching hint; the answer is the same

Refused, naming the field: `thinking` enabled (Chat Completions has no
thinking budget), thinking and redacted_thinking blocks (their signatures
mean nothing to another provider), document and any other block type,
images inside tool results and in assistant turns (a `tool` or assistant
message carries text only), image sources other than base64 and url, and
server tools (a tool `type` other than custom, e.g. web_search).

    >>> chat = to_chat({"model": "chat", "max_tokens": 64, "system": "be brief", "stop_sequences": ["END"],
    ...                 "metadata": {"user_id": "u-1"}, "messages": [{"role": "user", "content": "Hi"}]}, "p")
    >>> chat["messages"]
    [{'role': 'system', 'content': 'be brief'}, {'role': 'user', 'content': 'Hi'}]
    >>> chat["max_tokens"], chat["stop"], chat["user"]
    (64, ['END'], 'u-1')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ..errors import GatewayError, invalid_request

Refuse = Callable[[str, str], GatewayError]  # (the field's path, what it holds) -> the 400 to raise

_SAME = ("max_tokens", "temperature", "top_p", "top_k")


def to_chat(body: dict[str, Any], provider: str) -> dict[str, Any]:
    """The Chat Completions body for `body` (without model and stream, which the dialect sets)."""

    def refuse(path: str, what: str) -> GatewayError:
        return invalid_request(f"{path}: {what}, which Chat Completions cannot carry (provider {provider} "
                               "speaks it)", path)

    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": system if isinstance(system, str) else _text(system)})
    for i, message in enumerate(body["messages"]):
        messages += _message(message, f"messages.{i}", refuse)
    chat: dict[str, Any] = {"messages": messages}
    for key in _SAME:
        if body.get(key) is not None:
            chat[key] = body[key]
    if body.get("stop_sequences"):
        chat["stop"] = list(body["stop_sequences"])
    user = (body.get("metadata") or {}).get("user_id")
    if user:
        chat["user"] = user
    thinking = body.get("thinking")
    if thinking is not None and thinking.get("type") != "disabled":
        raise refuse("thinking", "extended thinking")
    if body.get("tools"):
        chat["tools"] = [_tool(tool, f"tools.{i}", refuse) for i, tool in enumerate(body["tools"])]
    if body.get("tool_choice"):
        chat.update(_tool_choice(body["tool_choice"]))
    return chat


def _text(blocks: list[dict[str, Any]]) -> str:
    return "".join(block["text"] for block in blocks)


def _message(message: dict[str, Any], path: str, refuse: Refuse) -> list[dict[str, Any]]:
    """One Messages turn: one chat message, or for a user turn with tool results, one `tool`
    message per result (they must follow the assistant's tool_calls) and then the rest."""
    role, content = message["role"], message["content"]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at, kind = f"{path}.content.{j}", block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and role == "user":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block["source"], at, refuse)}})
        elif kind == "tool_use":
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": orjson.dumps(block["input"]).decode()}})
        elif kind == "tool_result":
            out.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                        "content": _tool_result(block, at, refuse)})
        else:
            raise refuse(f"{at}.type", f"{kind!r} content in a {role} message")
    if role == "assistant":
        text = "".join(part["text"] for part in parts)
        chat: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
        if calls:
            chat["tool_calls"] = calls
        return [chat]
    if parts or not out:
        # Text alone stays a string, which every Chat Completions provider takes; images need parts.
        only_text = all(part["type"] == "text" for part in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if only_text else parts})
    return out


def _image_url(source: dict[str, Any], path: str, refuse: Refuse) -> str:
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        return f"data:{source.get('media_type', 'image/png')};base64,{source['data']}"
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise refuse(f"{path}.source.type", f"an image source of type {source.get('type')!r}")


def _tool_result(block: dict[str, Any], path: str, refuse: Refuse) -> str:
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise refuse(f"{path}.content.{k}.type", f"{kind!r} content in a tool result")
        text = _text(content)
    # A tool message has no error flag: say it in the text, which is what the model reads.
    return f"Error: {text}" if block.get("is_error") else text


def _tool(tool: dict[str, Any], path: str, refuse: Refuse) -> dict[str, Any]:
    kind = tool.get("type", "custom")
    if kind != "custom":
        raise refuse(f"{path}.type", f"the server tool {kind!r}")
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: dict[str, Any]) -> dict[str, Any]:
    kind = choice["type"]
    out: dict[str, Any] = {"tool_choice": {"auto": "auto", "any": "required", "none": "none"}.get(kind)
                           or {"type": "function", "function": {"name": choice.get("name")}}}
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out
