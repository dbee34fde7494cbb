"""Failures in Anthropic's error shape: `{"type": "error", "error": {"type": ..., "message": ...}}`.

The status is the one every endpoint answers with; the type comes from one
table keyed by the gateway's error code (docs/log-schema.md), so an
Anthropic client gets the category its SDK knows. A code not in the table
(a provider's own 4xx relayed as `upstream_rejected`) takes its type from
the status, as Anthropic's API does.

    >>> from gateway.errors import GatewayError
    >>> error_body(GatewayError(404, "model_not_found", "No route"))
    b'{"type":"error","error":{"type":"not_found_error","message":"No route"}}'
    >>> error_event(GatewayError(200, "timeout_idle", "Timed out"))
    b'event: error\\ndata: {"type":"error","error":{"type":"timeout_error","message":"Timed out"}}\\n\\n'
"""

from __future__ import annotations

from typing import Final

import orjson

from ..errors import GatewayError
from ..sse import encode_event

# The gateway's error code -> Anthropic's error type (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES: Final[dict[str, str]] = {
    "invalid_json": "invalid_request_error",
    "invalid_request": "invalid_request_error",
    "unknown_arm": "invalid_request_error",
    "method_not_allowed": "invalid_request_error",
    "model_not_found": "not_found_error",
    "not_found": "not_found_error",
    "request_too_large": "request_too_large",
    "upstream_rate_limited": "rate_limit_error",
    # The provider refused the gateway's key, not the client's: not an authentication_error, which
    # would tell the client to fix its own key.
    "upstream_auth_failed": "api_error",
    "upstream_unreachable": "api_error",
    "upstream_error": "api_error",
    "upstream_truncated": "api_error",
    "timeout_connect": "timeout_error",
    "timeout_first_token": "timeout_error",
    "timeout_idle": "timeout_error",
    "timeout_total": "timeout_error",
    "internal_error": "api_error",
    "missing_api_key": "authentication_error",
    "invalid_api_key": "authentication_error",
    "model_not_allowed": "permission_error",
    "unsupported_media_type": "invalid_request_error",
    "rate_limit_exceeded": "rate_limit_error",
    "limits_unavailable": "overloaded_error",
    "pool_exhausted": "overloaded_error",
    "bad_http": "invalid_request_error",
    "request_timeout": "invalid_request_error",
    "too_many_streams": "overloaded_error",
    "gateway_shutting_down": "overloaded_error",
    "resume_buffer_full": "overloaded_error",
}

# Anthropic's own status -> type, for codes the table does not name.
_BY_STATUS: Final[dict[int, str]] = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    504: "timeout_error", 529: "overloaded_error",
}


def error_type(error: GatewayError) -> str:
    """
        >>> error_type(GatewayError(422, "upstream_rejected", "bad")), error_type(GatewayError(503, "x", "busy"))
        ('invalid_request_error', 'api_error')
    """
    if error.code in ERROR_TYPES:
        return ERROR_TYPES[error.code]
    return _BY_STATUS.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")


def error_body(error: GatewayError) -> bytes:
    """The body of a failure answered with a status."""
    return orjson.dumps({"type": "error", "error": {"type": error_type(error), "message": error.message}})


def error_event(error: GatewayError) -> bytes:
    """A failure after the stream began: the SSE event the anthropic SDKs raise on."""
    return encode_event(error_body(error), event="error")
