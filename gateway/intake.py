"""The client's request body: JSON, of a sane size and shape, or a clear 4xx.

    >>> json_depth({"a": [1, {"b": []}]})
    4
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .errors import GatewayError, invalid_request

# orjson reads 1024 levels but writes at most 254; a request we cannot re-encode for the
# provider must be refused here, not fail later as a 500. No real chat request nests this deep.
MAX_JSON_DEPTH = 64


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (content_type.startswith("application/")
                                                  and content_type.endswith("+json"))


async def read_json(request: web.Request, max_body_bytes: int) -> Any:
    # A JSON body must say so: text/plain, form and multipart bodies are what a browser sends
    # cross-origin without a CORS preflight, so accepting them would let any site spend our keys.
    if not _is_json(request.content_type):
        raise GatewayError(415, "unsupported_media_type",
                           f"Content-Type must be application/json, not {request.content_type!r}",
                           param="Content-Type")
    # Read here rather than with request.read(), which keeps its bytes on the request: a stream
    # holds its request for its whole life, and the parsed body is all it needs (bench/README.md,
    # "Open-stream capacity": the prompt was held twice).
    body = bytearray()
    try:
        while chunk := await request.content.readany():
            body += chunk
            if len(body) > max_body_bytes:
                raise GatewayError(413, "request_too_large",
                                   f"The request body is larger than {max_body_bytes} bytes")
    except web.HTTPException as exc:  # e.g. a Content-Encoding the body does not match
        raise invalid_request(f"The request body could not be read: {exc.reason}") from None
    if not body:
        raise invalid_request("The request body is empty; expected a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, "invalid_json", f"The request body is not valid JSON: {exc}") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise invalid_request(f"The request body nests deeper than {MAX_JSON_DEPTH} levels")
    return data


def json_depth(value: Any) -> int:
    """How deeply arrays and objects nest (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest
