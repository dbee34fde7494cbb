"""The per-request record and the one log line it becomes.

The relay fills a `RequestRecord` while the request runs (plain attribute
writes, no logging calls on the hot path) and `RequestLog.emit` writes it once
at the end as a JSON line: structlog's processor chain rendering with orjson
into bytes, handed to a writer thread so a slow disk or a full pipe never
blocks the event loop. The field list is docs/log-schema.md.
"""

from __future__ import annotations

import math
import os
import queue
import sys
import threading
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import IO, Any

import orjson
import structlog

from .config import Price
from .errors import Scrubber

SCHEMA_VERSION = 1


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    endpoint: str
    route: str | None = None
    arm: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    user_key_hash: str | None = None
    user_key_source: str | None = None
    stream: bool = False
    status: int = 0
    outcome: str = "ok"
    attempts: int = 0
    fallback_used: bool = False
    attempt_errors: list[str] = field(default_factory=list)  # "provider:code" per failed attempt
    upstream_connect_ms: float | None = None
    ttfb_ms: float | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    max_gap_ms: float | None = None
    p95_gap_ms: float | None = None
    gateway_overhead_ms: float | None = None
    events_out: int = 0
    bytes_out: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_source: str = "none"
    cost_usd: float | None = None
    client_disconnected: bool = False
    error_code: str | None = None
    error_message: str | None = None
    # Working state, not logged.
    started: float = field(default_factory=time.monotonic)
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))
    content_times: list[float] = field(default_factory=list)
    overhead_s: float = 0.0
    output_events: int = 0  # output deltas relayed: the token estimate when upstream sends no usage

    def since_start_ms(self, now: float | None = None) -> float:
        return _ms((time.monotonic() if now is None else now) - self.started)

    def content_written(self, now: float) -> None:
        if not self.content_times:
            self.ttft_ms = self.since_start_ms(now)
        self.content_times.append(now)

    def fail(self, outcome: str, code: str, message: str) -> None:
        self.outcome, self.error_code, self.error_message = outcome, code, message

    def account(self, prompt: int | None, completion: int | None, *, source: str,
                price: Price | None) -> None:
        self.prompt_tokens, self.completion_tokens, self.usage_source = prompt, completion, source
        if price is not None and (prompt is not None or completion is not None):
            cost = ((prompt or 0) * price.input_per_mtok + (completion or 0) * price.output_per_mtok) / 1e6
            self.cost_usd = round(cost, 10)

    def finish(self) -> None:
        now = time.monotonic()
        self.latency_ms = self.since_start_ms(now)
        times = self.content_times
        if len(times) >= 2:
            gaps = sorted(b - a for a, b in zip(times, times[1:]))
            self.max_gap_ms = _ms(gaps[-1])
            self.p95_gap_ms = _ms(gaps[max(0, math.ceil(0.95 * len(gaps)) - 1)])  # nearest rank
        self.gateway_overhead_ms = _ms(self.overhead_s)

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": SCHEMA_VERSION,
                               "ts": self.ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")}
        for f in _LOGGED:
            out[f] = getattr(self, f)
        return out


_LOGGED = [f.name for f in fields(RequestRecord)
           if f.name not in ("started", "ts", "content_times", "overhead_s", "output_events")]


class QueueWriter:
    """A file-like sink whose writes go to a thread, so logging never blocks the loop.

    Each line leaves in a single unbuffered write(): with several worker
    processes appending to one file (O_APPEND) or one pipe (lines are under
    PIPE_BUF), their lines never interleave. The queue is unbounded on
    purpose: a stuck disk costs memory, never a log line.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="gateway-log", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        self._queue.put(data)

    def flush(self) -> None:  # every line is written as soon as the thread gets to it
        pass

    def _run(self) -> None:
        while (line := self._queue.get()) is not None:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)


class RequestLog:
    """Writes one JSON line per request."""

    def __init__(self, path: str | None, scrub: Scrubber) -> None:
        self._file: IO[bytes] | None = open(path, "ab", buffering=0) if path else None
        sys.stdout.flush()
        self._writer = QueueWriter(self._file.fileno() if self._file else sys.stdout.fileno())
        self._scrub = scrub
        structlog.configure(
            processors=[self._scrub_messages, structlog.processors.JSONRenderer(serializer=orjson.dumps)],
            logger_factory=structlog.BytesLoggerFactory(self._writer),  # type: ignore[arg-type]  # duck-typed file
            cache_logger_on_first_use=True,
        )
        self._log = structlog.get_logger()

    def _scrub_messages(self, logger: object, method: str, event: MutableMapping[str, Any]
                        ) -> MutableMapping[str, Any]:
        # Error text can come from an upstream; never let a secret through.
        if event.get("error_message"):
            event["error_message"] = self._scrub(event["error_message"])
        return event

    def emit(self, record: RequestRecord) -> None:
        self._log.info("request", **record.fields())

    def close(self) -> None:
        self._writer.close()
        if self._file is not None:
            self._file.close()
