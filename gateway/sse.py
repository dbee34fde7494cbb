"""Sans-IO incremental Server-Sent Events parser and encoder.

Bytes in, immutable :class:`Event` objects out; no I/O, no asyncio. Parsing
follows the WHATWG HTML "event stream interpretation" algorithm.

>>> p = SSEParser()
>>> p.feed(b"event: ping\\ndata: hel")
[]
>>> [ev] = p.feed(b"lo\\r\\ndata: world\\n\\n")
>>> ev.event, ev.data
('ping', 'hello\\nworld')
>>> ev.raw
b'event: ping\\ndata: hello\\r\\ndata: world\\n\\n'
>>> encode_event("a\\nb", event="delta", id="7")
b'event: delta\\nid: 7\\ndata: a\\ndata: b\\n\\n'
>>> p.feed(encode_comment("keep-alive") + DONE)[0].data
'[DONE]'
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["DONE", "Event", "SSEError", "SSEParser", "encode_comment", "encode_event"]

DONE: bytes = b"data: [DONE]\n\n"

_BOM = b"\xef\xbb\xbf"
# Module-level (looked up on every call) so tests can swap in a counting proxy.
_LINE_END = re.compile(rb"[\r\n]")
_STR_NEWLINES = re.compile(r"\r\n|\r|\n")
_BYTES_NEWLINES = re.compile(rb"\r\n|\r|\n")
_CR, _LF = 0x0D, 0x0A


class Event(NamedTuple):
    """One dispatched event. A named tuple, immutable as a frozen dataclass and a fifth of its
    cost to build: the relay makes one per upstream event."""

    raw: bytes
    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEError(Exception):
    """The stream violates a protocol limit; the parser must not be reused.

    `events` are the events the same `feed` call completed before the
    violation: they were valid, so a caller may still deliver them.
    """

    def __init__(self, message: str, events: list[Event] | None = None) -> None:
        super().__init__(message)
        self.events = events or []


class SSEParser:
    """Incremental parser: call :meth:`feed` per chunk, :meth:`close` at EOF.

    ``raw`` of each event runs from the start of its block to its terminating
    blank line. When that blank line ends in ``\\r\\n`` the event is dispatched
    at the ``\\r`` (so we never wait on the network for a ``\\n`` that may be in
    the next chunk) and the ``\\n`` belongs to no event; that way ``raw`` is the
    same however the stream was chunked, and is still a valid SSE block.
    """

    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024, *, strict: bool = False) -> None:
        self.max_event_bytes = max_event_bytes
        # WHATWG ignores a line that is neither a comment nor a known field. A
        # caller whose peer is known to speak SSE can ask for it to be an
        # SSEError instead: from such a peer it means bytes that are not SSE
        # at all (a proxy's HTML page, a bare JSON body).
        self.strict = strict
        self.discarded_partial = False
        self.last_event_id: str | None = None  # committed at each blank line
        self.reconnection_time: int | None = None  # latest valid retry, any block
        # The buffer always starts at the current block's first byte, so block
        # length == the offset of whatever we are looking at.
        self._buf = bytearray()
        self._pos = 0  # bytes before this have been scanned for line endings
        self._line_start = 0
        self._skip_lf = False  # last line ended in \r: a following \n is part of it
        self._bom_pending = True
        self._data: list[str] = []
        self._type = ""
        self._id_buf: str | None = None
        self._retry: int | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[Event]:
        if type(chunk) is not bytes:
            chunk = bytes(chunk)  # a bytearray or memoryview: raw is always bytes
        events: list[Event] = []
        buf = self._buf
        if self._bom_pending and not buf and len(chunk) >= len(_BOM):
            self._bom_pending = False
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM):]
        if not buf and not self._skip_lf and not self._bom_pending:
            # Between blocks, as almost every chunk from a provider begins: its leading one-line
            # `data:` blocks are whole events, found by C-speed searches (the rest goes below).
            start = self._data_blocks(chunk, events)
            if start == len(chunk):
                return events
            if start:
                chunk = chunk[start:]
        buf += chunk
        if self._bom_pending:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                return []  # might still become a BOM; undecidable yet
            if buf.startswith(_BOM):
                del buf[: len(_BOM)]
            self._bom_pending = False
        while True:
            if self._skip_lf:
                if self._pos >= len(buf):
                    break
                self._skip_lf = False
                if buf[self._pos] == _LF:
                    if self._pos == 0:
                        del buf[:1]  # tail of a dispatched block's \r\n
                    else:
                        self._pos = self._line_start = self._pos + 1
            m = _LINE_END.search(buf, self._pos)
            if m is None:
                self._pos = len(buf)
                break
            end = m.start()
            self._skip_lf = buf[end] == _CR
            self._pos = end + 1
            if end > self._line_start:
                known = self._line(buf[self._line_start : end].decode("utf-8", "replace"))
                if not known and self.strict:
                    raise SSEError("a line is neither a comment nor a field (data, event, id, retry)", events)
                self._line_start = self._pos
                continue
            # Blank line: the block ends here, whether or not it dispatches.
            if self._pos > self.max_event_bytes:
                raise SSEError(f"an event exceeds {self.max_event_bytes} bytes", events)
            ev = self._dispatch(bytes(buf[: self._pos]))
            if ev is not None:
                events.append(ev)
            del buf[: self._pos]  # amortised O(1): bytearray trims its head in place
            self._pos = self._line_start = 0
        if len(buf) > self.max_event_bytes:
            raise SSEError(f"an incomplete event exceeds {self.max_event_bytes} bytes", events)
        return events

    def _data_blocks(self, chunk: bytes, events: list[Event]) -> int:
        """The fast path of `feed`, from the start of a block: each leading block that is one
        `data:` line ended by a blank line, LF only, becomes an event exactly as the line-by-line
        path would make it. Returns where the first other block (or the unfinished one) begins."""
        start = 0
        while chunk.startswith(b"data:", start):
            end = chunk.find(b"\n", start)
            if end == -1 or chunk[end + 1 : end + 2] != b"\n" or chunk.find(b"\r", start, end) != -1:
                break  # unfinished, more than one line, or CR line endings: line by line
            if end + 2 - start > self.max_event_bytes:
                raise SSEError(f"an event exceeds {self.max_event_bytes} bytes", events)
            value = start + 6 if chunk[start + 5 : start + 6] == b" " else start + 5
            events.append(Event(chunk[start : end + 2], chunk[value:end].decode("utf-8", "replace"),
                                "message", self._id_buf))
            start = end + 2
        if start:
            self.last_event_id = self._id_buf  # as each dispatch commits it
        return start

    def close(self) -> list[Event]:
        """End of stream. An unterminated block is never dispatched."""
        if self._buf.strip():
            self.discarded_partial = True
        self._buf.clear()
        self._pos = self._line_start = 0
        self._data, self._type, self._retry = [], "", None
        return []

    def _line(self, line: str) -> bool:
        """Apply one non-blank line; False when it is an unknown field (ignored, per WHATWG)."""
        if line[0] == ":":
            return True
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id":
            if "\0" not in value:
                self._id_buf = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                try:
                    self._retry = self.reconnection_time = int(value)
                except ValueError:  # beyond sys.get_int_max_str_digits()
                    pass
        else:
            return False
        return True

    def _dispatch(self, raw: bytes) -> Event | None:
        # Per spec the id is committed even by blocks that dispatch nothing.
        self.last_event_id = self._id_buf
        data, etype, retry = self._data, self._type, self._retry
        self._data, self._type, self._retry = [], "", None
        if not data:
            return None
        return Event(raw, "\n".join(data), etype or "message", self._id_buf, retry)


def _check_field(name: str, value: str | None) -> None:
    if value is not None and ("\r" in value or "\n" in value):
        raise ValueError(f"{name} must not contain line breaks: {value!r}")


def encode_event(
    data: str | bytes,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Encode one event block with ``\\n`` line endings."""
    _check_field("event", event)
    _check_field("id", id)
    if id is not None and "\0" in id:
        raise ValueError("id must not contain NUL (receivers would ignore it)")
    if retry is not None and retry < 0:
        raise ValueError("retry must be a non-negative integer")
    out = bytearray()
    if event is not None:
        out += b"event: " + event.encode() + b"\n"
    if id is not None:
        out += b"id: " + id.encode() + b"\n"
    if retry is not None:
        out += b"retry: %d\n" % retry
    lines = (
        _BYTES_NEWLINES.split(data)
        if isinstance(data, bytes)
        else [s.encode() for s in _STR_NEWLINES.split(data)]
    )
    for line in lines:
        out += b"data: " + line + b"\n"
    return bytes(out + b"\n")


def encode_comment(text: str = "") -> bytes:
    """A comment-only block (e.g. a keep-alive); receivers dispatch nothing."""
    return b"".join(b": " + s.encode() + b"\n" for s in _STR_NEWLINES.split(text)) + b"\n"
