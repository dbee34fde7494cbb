"""Resumable streams, the decisions without I/O: ids, secrets, the byte bound, the window.

A resumable stream's events are numbered from 1 and each is stored with its
`id:` line, so a client that reconnects with `Last-Event-ID: N` is sent
exactly the events after N. Like `stream_core.py`, nothing here touches a
socket or a clock: `resumable.py` does the I/O around these rules, and
`eventlog.py` stores the events (in this process, or in Redis Streams).

    >>> framer = EventFramer(max_bytes=64)
    >>> framer.frame([b'data: {"token":"Hi"}\\n\\n'])
    [(1, b'id: 1\\ndata: {"token":"Hi"}\\n\\n')]
    >>> framer.frame([b"data: " + b"x" * 60 + b"\\n\\n"]) is None  # past the bound: the stream is cut
    True
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import GatewayError

# A field-only block (no data): EventSource-style clients reconnect after 1 s instead of their
# default of several; nothing is dispatched.
RETRY = b"retry: 1000\n\n"


def new_stream_id() -> str:
    """The stream's public name. Never the request id: a client may choose that, so another
    client could guess it or make it collide."""
    return uuid.uuid4().hex


def new_token() -> str:
    """The secret a resume must present: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What the event log keeps of the token: its SHA-256 (a leaked store holds no usable secret)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def token_matches(digest: str, presented: str | None) -> bool:
    """The presented token is the stream's, compared in constant time.

        >>> token_matches(token_digest("s3cret"), "s3cret"), token_matches(token_digest("s3cret"), "guess")
        (True, False)
        >>> token_matches(token_digest("s3cret"), None)
        False
    """
    if not presented:
        return False
    return hmac.compare_digest(token_digest(presented), digest)


def frame(seq: int, event: bytes) -> bytes:
    """One rendered SSE event with its id: an `id:` line before the event's own lines, which
    end with its blank line, so the id belongs to that event.

        >>> frame(7, b"data: [DONE]\\n\\n")
        b'id: 7\\ndata: [DONE]\\n\\n'
    """
    return b"id: %d\n" % seq + event


def parse_last_event_id(value: str | None) -> int | None:
    """The sequence number a resume starts after: 0 without the header, None when it is not one
    of ours (a client bug: answered 400).

        >>> parse_last_event_id(None), parse_last_event_id(" 12 "), parse_last_event_id("12a")
        (0, 12, None)
    """
    if value is None or not value.strip():
        return 0
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


def buffer_full(max_bytes: int) -> GatewayError:
    """The stream outgrew its event log: cut, never unbounded memory.

        >>> buffer_full(1024).message
        'The resumable stream passed its bound of 1024 stored bytes and was cut'
    """
    return GatewayError(503, "resume_buffer_full", f"The resumable stream passed its bound of {max_bytes} "
                        "stored bytes and was cut", outcome="unavailable")


class EventFramer:
    """Numbers a stream's events and keeps the total under `max_bytes` (ids included)."""

    __slots__ = ("max_bytes", "stored", "last_seq")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.stored = 0
        self.last_seq = 0

    def frame(self, events: Sequence[bytes]) -> list[tuple[int, bytes]] | None:
        """The events with their ids, or None when they would pass the bound (nothing is taken)."""
        framed = [frame(self.last_seq + i, event) for i, event in enumerate(events, 1)]
        size = sum(map(len, framed))
        if self.stored + size > self.max_bytes:
            return None
        self.stored += size
        self.last_seq += len(framed)
        return list(zip(range(self.last_seq - len(framed) + 1, self.last_seq + 1), framed))

    def frame_last(self, event: bytes) -> tuple[int, bytes]:
        """The stream's ending (its error event): stored even past the bound, so the client is told."""
        self.last_seq += 1
        framed = frame(self.last_seq, event)
        self.stored += len(framed)
        return self.last_seq, framed


class Presence:
    """Whether a stream still has a client, and for how long it has had none.

    The owner of the stream looks now and then (`observe`); once nobody has
    read for `window_s`, the window is over and the upstream is closed.

        >>> p = Presence(window_s=30)
        >>> p.observe(present=False, now=10.0), p.observe(present=True, now=12.5), p.away_ms(20.0)
        (False, False, 2500.0)
        >>> p.observe(present=False, now=20.0), p.observe(present=False, now=50.0), p.away_ms(50.0)
        (False, True, 32500.0)
    """

    __slots__ = ("window_s", "away_since", "away_s")

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.away_since: float | None = None
        self.away_s = 0.0

    def observe(self, *, present: bool, now: float) -> bool:
        """Note what was seen at `now`; True when the window has run out."""
        if present:
            if self.away_since is not None:
                self.away_s += now - self.away_since
                self.away_since = None
            return False
        if self.away_since is None:
            self.away_since = now
        return now - self.away_since >= self.window_s

    def away_ms(self, now: float) -> float:
        away = self.away_s + (now - self.away_since if self.away_since is not None else 0.0)
        return round(away * 1000.0, 1)


@dataclass(frozen=True, slots=True)
class StreamMeta:
    """What a resume is checked against. Never the token itself."""

    stream_id: str
    token_digest: str
    key_name: str  # the gateway key that started it ("" when the gateway runs open)
    request_id: str
    owner: str  # the instance whose task reads the upstream


def window_expired(window_s: float) -> GatewayError:
    """Nobody resumed within the window: the upstream is closed, and the stream is gone."""
    return GatewayError(504, "resume_window_expired", f"No client read the stream for {window_s:g}s; the upstream "
                        "was closed", outcome="client_disconnected")


def cancelled() -> GatewayError:
    """A client cancelled the stream (`DELETE /v1/streams/{id}`, what Stop sends)."""
    return GatewayError(409, "stream_cancelled", "The client cancelled the stream", outcome="client_disconnected")


def not_found() -> GatewayError:
    """Unknown, expired, or the wrong token or key: one answer, so an id's existence is not revealed."""
    return GatewayError(404, "stream_not_found", "No resumable stream with that id and token (it may have expired)")
