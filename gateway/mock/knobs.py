"""Latency profiles and the X-Mock-* knob headers that override them per request, unscoped by X-Mock-Scope."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

_LINE_ENDINGS: Final = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


@dataclass(frozen=True, slots=True)
class MockProfile:
    tokens: int = 20  # completion tokens per response
    first_token_delay_ms: float = 50.0  # delay after response headers before the first content event
    inter_token_delay_ms: float = 20.0


@dataclass(frozen=True, slots=True)
class Knobs:
    """One request's profile with its knob headers applied."""

    tokens: int
    delays: tuple[float, float]  # seconds: before the first token, between tokens
    chunk_bytes: int  # write the stream in pieces this big; 0 writes each event whole
    eol: bytes


def _knob(headers: Mapping[str, str], name: str, default: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not a number") from None
    if value < 0:
        raise ValueError(f"{name}: {raw!r} is negative")
    return value


def read_knobs(headers: Mapping[str, str], profile: MockProfile) -> Knobs:
    """The knobs a request's headers set over `profile`; ValueError names a bad header."""
    tokens = int(_knob(headers, "X-Mock-Tokens", profile.tokens))
    delays = (
        _knob(headers, "X-Mock-First-Token-Delay-Ms", profile.first_token_delay_ms) / 1000,
        _knob(headers, "X-Mock-Inter-Token-Delay-Ms", profile.inter_token_delay_ms) / 1000,
    )
    chunk_bytes = int(_knob(headers, "X-Mock-Chunk-Bytes", 0))
    ending = headers.get("X-Mock-Line-Ending", "lf").lower()
    if ending not in _LINE_ENDINGS:
        raise ValueError(f"X-Mock-Line-Ending: {ending!r} is not one of lf, crlf, cr")
    return Knobs(tokens, delays, chunk_bytes, _LINE_ENDINGS[ending])
