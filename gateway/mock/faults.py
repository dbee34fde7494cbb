"""The X-Mock-Fault spec, its X-Mock-Scope and the per-key `times` counters: parsing and counting, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

# Stream faults that fire after N content tokens, by header key.
_CUTS: Final = {
    "drop_after": "drop",
    "truncate_after": "truncate",
    "error_after": "error",
    "stall_after": "stall",
    "garbage_after": "garbage",
    "bad_json_after": "bad_json",
    "endless_after": "endless",
}
# Effectively endless, yet finite: a relay that buffered it all would fail a
# test instead of taking the machine down.
ENDLESS_BYTES: Final = 1 << 30


@dataclass(frozen=True, slots=True)
class Fault:
    status: int | None = None
    retry_after: str | None = None
    stall_headers: bool = False
    # drop | truncate | error | stall | garbage | bad_json | endless, after `cut_after` tokens
    cut: str | None = None
    cut_after: int = 0
    omit_usage: bool = False
    endless_bytes: int = ENDLESS_BYTES  # how long the endless line runs before the body ends
    content_type: str | None = None  # the stream's Content-Type instead of text/event-stream


NO_FAULT: Final = Fault()


def _nonneg_int(name: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not an integer") from None
    if n < 0:
        raise ValueError(f"{name}: {value!r} is negative")
    return n


def parse_fault(spec: str) -> tuple[Fault, int | None, str]:
    """X-Mock-Fault -> (fault, times, key). Unknown keys are errors, so a typo
    in a test fails loudly instead of silently testing the happy path."""
    fields: dict[str, str] = {}
    for part in spec.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"X-Mock-Fault: {part.strip()!r} is not key=value")
        fields[key.strip()] = value.strip()

    status = retry_after = cut = content_type = None
    cut_after = 0
    endless_bytes = ENDLESS_BYTES
    stall_headers = omit_usage = False
    times: int | None = None
    counter_key = ""
    for key, value in fields.items():
        if key == "status":
            status = _nonneg_int(key, value)
            if not 400 <= status <= 599:
                raise ValueError(f"status: {status} is not an error status")
        elif key == "retry_after":
            retry_after = value
        elif key in _CUTS:
            if cut is not None:
                raise ValueError("X-Mock-Fault: at most one of " + ", ".join(_CUTS))
            cut, cut_after = _CUTS[key], _nonneg_int(key, value)
        elif key == "stall" and value == "headers":
            stall_headers = True
        elif key == "stall" and value == "first":
            # Headers then nothing is exactly a stall after zero tokens.
            if cut is not None:
                raise ValueError("X-Mock-Fault: at most one of " + ", ".join(_CUTS))
            cut, cut_after = "stall", 0
        elif key == "endless_bytes":
            endless_bytes = _nonneg_int(key, value)
        elif key == "content_type":
            if not value:
                raise ValueError("content_type: empty")
            content_type = value
        elif key == "omit_usage":
            omit_usage = value not in ("", "0", "false")
        elif key == "times":
            times = _nonneg_int(key, value)
        elif key == "key":
            counter_key = value
        else:
            raise ValueError(f"X-Mock-Fault: unknown {key}={value}")
    fault = Fault(status=status, retry_after=retry_after, stall_headers=stall_headers, cut=cut,
                  cut_after=cut_after, omit_usage=omit_usage, endless_bytes=endless_bytes,
                  content_type=content_type)
    return fault, times, counter_key


def read_fault(headers: Mapping[str, str]) -> tuple[Fault, int | None, str]:
    """The request's X-Mock-Fault as parse_fault reads it; no header is no fault."""
    spec = headers.get("X-Mock-Fault")
    return parse_fault(spec) if spec else (NO_FAULT, None, "")


def in_scope(headers: Mapping[str, str], profile_name: str) -> bool:
    """Whether X-Mock-Scope (default: every profile) lists the profile."""
    scope = headers.get("X-Mock-Scope")
    return scope is None or profile_name in {s.strip() for s in scope.split(",")}


class FaultCounters:
    """How many in-scope requests each `key` has seen, for `times=K`."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def admit(self, key: str, times: int) -> bool:
        """Count one more request with `key`; true while it is among the first `times`."""
        count = self._counts[key] = self._counts.get(key, 0) + 1
        return count <= times

    def clear(self) -> None:
        self._counts.clear()
