"""The mock's request records: kept only when asked for, free of credentials, bounded.

The records exist so tests can ask what the provider saw. They are off by
default because the mock also runs inside `gateway serve`, where anyone who
can reach its port could read them: with recording on they hold prompts.
They never hold a credential: a header whose name says it carries one keeps
its name with the value replaced, and the dialect's key is described by the
server (`api_key`: absent, present, matched or mismatched), never copied.

    >>> recorder = Recorder(True, RecordLimits(body_bytes=8))
    >>> record = recorder.start(1, "openai", "default", "/v1/chat/completions",
    ...                         {"Authorization": "Bearer sk-secret", "X-Mock-Tag": "t"}, b'{"model": "a-long-name"}')
    >>> record["headers"], record["body"], record["body_truncated"]
    ({'authorization': '[redacted]', 'x-mock-tag': 't'}, '{"model"', True)
    >>> off = Recorder(False)
    >>> off.start(2, "openai", "default", "/v1/chat/completions", {}, b"{}")["body"], off.records()
    ({}, [])
"""

from __future__ import annotations

import hmac
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

REDACTED: Final = "[redacted]"

# Names that carry a credential: Authorization, Proxy-Authorization, X-Api-Key,
# Api-Key (Azure), X-Goog-Api-Key, Cookie, X-Auth-Token, X-Mock-Require-Key (a
# test's expected key is the provider key itself)... Matched on the whole last
# word, so knobs like X-Mock-Tokens keep their values.
_CREDENTIAL_NAME: Final = re.compile(r"(?:^|-)(?:auth\w*|cookie|credentials?|key|password|secret|token)$")


def is_credential(name: str) -> bool:
    """Whether a header (any case) carries a credential by its name.

        >>> [is_credential(n) for n in ("Authorization", "x-api-key", "X-Mock-Require-Key", "X-Mock-Tokens")]
        [True, True, True, False]
    """
    return _CREDENTIAL_NAME.search(name.lower()) is not None


def key_status(key: str | None, required: Sequence[str]) -> str:
    """What a record says of the request's API key, in place of the key.

        >>> key_status(None, []), key_status("sk-a", []), key_status("sk-a", ["sk-a"]), key_status("sk-b", ["sk-a"])
        ('absent', 'present', 'matched', 'mismatched')
    """
    if not key:
        return "absent"
    if not required:
        return "present"
    return "matched" if all(hmac.compare_digest(key.encode(), r.encode()) for r in required) else "mismatched"


@dataclass(frozen=True, slots=True)
class RecordLimits:
    records: int = 10_000  # the oldest records go first past either bound
    bytes: int = 16 * 1024 * 1024  # all records together, as their JSON
    body_bytes: int = 16 * 1024  # a body over this is kept as its first bytes, as text


class Recorder:
    """The records of one mock app, oldest first."""

    __slots__ = ("enabled", "limits", "_records", "_total")

    def __init__(self, enabled: bool, limits: RecordLimits = RecordLimits()) -> None:
        self.enabled = enabled
        self.limits = limits
        self._records: deque[tuple[dict[str, Any], int]] = deque()  # (record, its size when kept)
        self._total = 0

    def start(
        self, record_id: int, dialect: str, profile: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> dict[str, Any]:
        """A new record for one request. The server fills in the rest as the request goes on;
        when recording is off the record is the server's alone and is dropped with the request."""
        record: dict[str, Any] = {
            "id": record_id,
            "dialect": dialect,
            "profile": profile,
            "path": path,
            "headers": {
                name.lower(): REDACTED if is_credential(name) else value for name, value in headers.items()
            },
            "api_key": None,
            **self._body(body),
            "started": None,
            "ended": None,
            "outcome": None,
            "status": None,
            "tokens_sent": 0,
            "bytes_sent": 0,
        }
        if self.enabled:
            self._keep(record)
        return record

    def records(self) -> list[dict[str, Any]]:
        return [record for record, _ in self._records]

    def clear(self) -> None:
        self._records.clear()
        self._total = 0

    def _body(self, body: bytes) -> dict[str, Any]:
        if len(body) > self.limits.body_bytes:
            head = body[: self.limits.body_bytes].decode("utf-8", "replace")
            return {"body": head, "body_bytes": len(body), "body_truncated": True}
        try:
            parsed: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = body.decode("utf-8", "replace")
        return {"body": parsed, "body_bytes": len(body), "body_truncated": False}

    def _keep(self, record: dict[str, Any]) -> None:
        # Sized once, when kept: what the server adds later is a few fixed-size fields.
        size = len(orjson.dumps(record))
        self._records.append((record, size))
        self._total += size
        while len(self._records) > self.limits.records or self._total > self.limits.bytes:
            _, dropped = self._records.popleft()
            self._total -= dropped
