"""Errors the gateway reports, in the OpenAI error shape.

Clients (the OpenAI SDKs among them) read `{"error": {"message", "type",
"code", "param"}}` and the HTTP status; the log line reads `outcome` and
`code`. One exception class carries all of it so no handler has to
translate twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import orjson


class GatewayError(Exception):
    """A failure reported to the client; `outcome` is what the log line records."""

    def __init__(self, status: int, code: str, message: str, *,
                 type: str | None = None, outcome: str | None = None,
                 param: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type or _default_type(status)
        self.outcome = outcome or ("client_error" if 400 <= status < 500 else "upstream_error")
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type,
                          "code": self.code, "param": self.param}}

    def json(self) -> bytes:
        return orjson.dumps(self.body())


def _default_type(status: int) -> str:
    return {400: "invalid_request_error", 401: "authentication_error",
            403: "permission_error", 404: "invalid_request_error",
            405: "invalid_request_error", 413: "invalid_request_error",
            415: "invalid_request_error", 429: "rate_limit_error",
            504: "timeout_error"}.get(status, "api_error" if status >= 500 else "invalid_request_error")


def invalid_request(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, "invalid_request", message, param=param)


# Timeouts, named like httpx's hierarchy: the code says which wait ran out.
def timeout(kind: str, seconds: float) -> GatewayError:
    what = {"connect": "connecting to the upstream provider",
            "first_token": "the first token from the upstream provider",
            "idle": "the next event from the upstream provider",
            "total": "the whole request"}[kind]
    return GatewayError(504, f"timeout_{kind}", f"Timed out after {seconds:g}s waiting for {what}",
                        outcome=f"timeout_{kind}")


def shutting_down() -> GatewayError:
    """The gateway is stopping and the drain window ended before the response did."""
    return GatewayError(503, "gateway_shutting_down", "The gateway is shutting down; retry the request",
                        outcome="shutdown")


class Scrubber:
    """Removes secrets from text that leaves the process (logs, error bodies).

    Known secrets (the configured API keys) are replaced wherever they appear;
    anything shaped like a bearer token or an `sk-` key is masked as well, in
    case an upstream echoes a key we never saw.
    """

    _SHAPES = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}|\bsk-[A-Za-z0-9_-]{8,}")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return self._SHAPES.sub(lambda m: (m.group(1) or "") + "[redacted]", text)
