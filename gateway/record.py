"""The per-request record: the one owner of what a request's log line says.

Every fact about a request reaches the record through a method named for what
happened (`routed`, `attempt_started`, `committed`, `wrote`, `served_by`,
`failed`, `disconnected`, `finished`), so the rules live here and nowhere else:
how tokens are accounted and priced, that a failure before any token costs
nothing, that text from outside is scrubbed of secrets (once, in `failed`,
before it can reach a client or the log), and that a record finishes once.

`RequestLog.emit` then writes the finished record as one JSON line: a
structlog chain of its own (never the global configuration) rendering with
orjson into bytes, handed to a writer thread (`logsink.py`) so a slow disk or
a full pipe never blocks the event loop. The field list is docs/log-schema.md.

    >>> from gateway.errors import GatewayError
    >>> record = RequestRecord("req-1", "chat_completions", scrub=lambda text: text.replace("sk-x", "[redacted]"))
    >>> record.failed(GatewayError(502, "upstream_error", "Provider p answered 500: bad key sk-x")).message
    'Provider p answered 500: bad key [redacted]'
    >>> record.finished({})
    >>> record.status, record.outcome, record.cost_usd
    (502, 'upstream_error', 0.0)
"""

from __future__ import annotations

import math
import operator
import sys
import time
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, Protocol

import orjson
import structlog

from .config import Price, Target
from .errors import GatewayError
from .logsink import QueueWriter
from .providers import Usage

SCHEMA_VERSION = 2


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


class TokenReport(Protocol):
    """Whatever served the request: it knows the tokens to account, and where they come from."""

    def tokens(self) -> tuple[Usage, str]: ...


class RecordFinished(RuntimeError):
    """The record was already finished: its log line is written, nothing may change it."""


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    endpoint: str
    key_name: str | None = None
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
    attempts_detail: list[dict[str, Any]] = field(default_factory=list)  # every attempt: provider, TTFT or error
    hedged: bool = False
    hedge_denied: bool = False  # a hedge was due, but the route's budget was spent
    hedge_winner: str | None = None
    hedge_cost_usd: float | None = None
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
    resumes: int | None = None  # resumable streams only: resume requests served before the stream ended
    resumed_on: list[str] | None = None  # the instance of each of those resumes, in order
    client_disconnected_ms: float | None = None  # resumable streams only: summed time with no client reading
    ratelimit: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None
    # Working state, not logged.
    scrub: Callable[[str], str] = field(default=str, repr=False)
    started: float = field(default_factory=time.monotonic)
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))
    content_times: array[float] = field(default_factory=lambda: array("d"))  # 8 bytes an output, no float objects
    overhead_s: float = 0.0
    served: TokenReport | None = None
    is_committed: bool = False
    is_finished: bool = False

    def since_start_ms(self, now: float | None = None) -> float:
        return _ms((time.monotonic() if now is None else now) - self.started)

    # --- what happens to a request, in order -------------------------------------

    def authenticated(self, key_name: str | None) -> None:
        self.key_name = key_name

    def limited(self, counts: dict[str, Any] | None) -> None:
        """The key's limits and what remained of them when the request was admitted (or refused)."""
        self.ratelimit = counts

    def requested(self, model: str, stream: bool) -> None:
        self.route, self.stream = model, stream

    def routed(self, arm: str, user_key_hash: str, user_key_source: str) -> None:
        self.arm, self.user_key_hash, self.user_key_source = arm, user_key_hash, user_key_source

    def attempt_started(self, target: Target, *, fallback: bool, hedge: bool = False) -> int:
        """An attempt begins; returns its index in `attempts_detail` for what happens to it next."""
        self.attempts += 1
        self.provider, self.upstream_model, self.fallback_used = target.provider, target.model, fallback
        self.attempts_detail.append({"provider": target.provider, "model": target.model, "fallback": fallback,
                                     "hedge": hedge, "result": "open", "ttft_ms": None, "error": None})
        return len(self.attempts_detail) - 1

    def attempt_failed(self, attempt: int, code: str) -> None:
        detail = self.attempts_detail[attempt]
        detail["result"], detail["error"] = "failed", code
        self.attempt_errors.append(f"{detail['provider']}:{code}")

    def attempt_opened(self, attempt: int) -> float:
        """The attempt's first content event (or its proper end) arrived: its TTFT, which it returns."""
        ttft = self.since_start_ms()
        self.attempts_detail[attempt]["ttft_ms"] = ttft
        return ttft

    def hedge_started(self) -> None:
        self.hedged = True

    def attempt_won(self, attempt: int) -> None:
        """Of attempts racing (a hedge), this one serves: the others are losers, closed unread."""
        detail = self.attempts_detail[attempt]
        detail["result"] = "won"
        self.provider, self.upstream_model = detail["provider"], detail["model"]
        self.fallback_used = detail["fallback"]
        if self.hedged:
            self.hedge_winner = detail["provider"]

    def attempt_lost(self, attempt: int) -> float:
        """A racing attempt that was still open when the other won; returns how long it had run."""
        detail = self.attempts_detail[attempt]
        detail["result"] = "lost"
        return self.since_start_ms()

    def upstream_answered(self) -> None:
        """The attempt's status line arrived (its body has not)."""
        self.upstream_connect_ms = self.since_start_ms()
        self.ttfb_ms = None

    def upstream_first_byte(self) -> None:
        if self.ttfb_ms is None:
            self.ttfb_ms = self.since_start_ms()

    def committed(self) -> None:
        """The status line went to the client: from now on a failure cannot change it."""
        if self.is_committed:
            raise RuntimeError("a response is committed once")
        self.is_committed, self.status = True, 200

    def wrote(self, nbytes: int, events: int, outputs: int, now: float, overhead_s: float = 0.0) -> None:
        """Bytes reached the client; `outputs` of the events carried model output."""
        self.bytes_out += nbytes
        self.events_out += events
        self.overhead_s += overhead_s
        if outputs:
            if not self.content_times:
                self.ttft_ms = self.since_start_ms(now)
            self.content_times.append(now)

    def served_by(self, report: TokenReport) -> None:
        """The response (streamed or not) that will be accounted when the request finishes."""
        self.served = report

    def failed(self, error: GatewayError) -> GatewayError:
        """The request fails with `error`; its message is scrubbed here, once, before the client or
        the log can see it (it may quote an upstream). Returns the error, ready to render."""
        error.message = self.scrub(error.message)
        if not self.is_committed:
            self.status = error.status
        self.outcome, self.error_code, self.error_message = error.outcome, error.code, error.message
        return error

    def crashed(self, exc: Exception) -> GatewayError:
        """A bug in the gateway: the log gets the exception's type and (scrubbed) text; the client
        a generic 500, never a trace."""
        self.failed(GatewayError(500, "internal_error", f"{type(exc).__name__}: {exc}", outcome="gateway_error"))
        return GatewayError(500, "internal_error", "The gateway failed to handle the request",
                            outcome="gateway_error")

    def disconnected(self) -> None:
        self.client_disconnected = True
        self.outcome, self.error_code = "client_disconnected", "client_disconnected"
        self.error_message = "the client closed the connection"

    def resumable_ended(self, resumed_on: list[str], away_ms: float) -> None:
        """A resumable stream's account of its clients, given when it really ends."""
        self.resumes, self.resumed_on, self.client_disconnected_ms = len(resumed_on), resumed_on, away_ms

    def abandoned(self, error: GatewayError) -> None:
        """A resumable stream ended without a client: its window ran out, or a client cancelled it."""
        self.failed(error)
        self.client_disconnected = True

    def finished(self, pricing: Mapping[str, Price]) -> None:
        """The request is over: account its tokens, price them, sum up its timing. Once."""
        if self.is_finished:
            raise RecordFinished(self.request_id)
        self.is_finished = True
        now = time.monotonic()
        self.latency_ms = self.since_start_ms(now)
        self._account(pricing.get(self.upstream_model or ""))
        self._account_losers(pricing)
        times = self.content_times
        if len(times) >= 2:
            gaps = sorted(b - a for a, b in zip(times, times[1:]))
            self.max_gap_ms = _ms(gaps[-1])
            self.p95_gap_ms = _ms(gaps[max(0, math.ceil(0.95 * len(gaps)) - 1)])  # nearest rank
        self.gateway_overhead_ms = _ms(self.overhead_s)

    def _account(self, price: Price | None) -> None:
        if self.served is None:
            # Nothing was served: a failure before any token costs nothing.
            self.cost_usd = None if self.outcome == "ok" else 0.0
            return
        usage, source = self.served.tokens()
        self.prompt_tokens, self.completion_tokens, self.usage_source = (
            usage.prompt_tokens, usage.completion_tokens, source)
        if source == "none":
            # A response without usage: unknown cost when it succeeded, none when it failed.
            self.cost_usd = None if self.outcome == "ok" else 0.0
        elif price is not None:
            cost = ((usage.prompt_tokens or 0) * price.input_per_mtok
                    + (usage.completion_tokens or 0) * price.output_per_mtok) / 1e6
            self.cost_usd = round(cost, 10)

    def _account_losers(self, pricing: Mapping[str, Price]) -> None:
        # A lost hedge was sent: the provider processed (and bills) its input. Its prompt is the
        # winner's, so the winner's prompt tokens priced at the loser's input price estimate it.
        losers = [d for d in self.attempts_detail if d["result"] == "lost"]
        if not self.hedged:
            return
        if not losers:
            self.hedge_cost_usd = 0.0
            return
        if self.prompt_tokens is None:
            return  # unknown
        cost = 0.0
        for loser in losers:
            price = pricing.get(loser["model"])
            if price is None:
                return  # unknown
            cost += self.prompt_tokens * price.input_per_mtok / 1e6
        self.hedge_cost_usd = round(cost, 10)

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": SCHEMA_VERSION,
                               "ts": self.ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")}
        out.update(zip(LOGGED_FIELDS, _logged_values(self)))
        return out


_WORKING = {"scrub", "started", "ts", "content_times", "overhead_s", "served", "is_committed", "is_finished"}
LOGGED_FIELDS = [name for name in RequestRecord.__dataclass_fields__ if name not in _WORKING]
_logged_values = operator.attrgetter(*LOGGED_FIELDS)  # all of them in one C call, in this order


class RequestLog:
    """Writes one JSON line per finished request, to a file or stdout.

    The chain is the log's own (`structlog.wrap_logger`), so two logs in one
    process (two apps, tests) never write into each other's files.
    """

    def __init__(self, path: str | None) -> None:
        self._file: IO[bytes] | None = open(path, "ab", buffering=0) if path else None
        sys.stdout.flush()
        self._writer = QueueWriter(self._file.fileno() if self._file else sys.stdout.fileno())
        self._log = structlog.wrap_logger(
            structlog.BytesLogger(self._writer),  # type: ignore[arg-type]  # a duck-typed binary file
            processors=[structlog.processors.JSONRenderer(serializer=orjson.dumps)],
            cache_logger_on_first_use=True,
        )

    def emit(self, record: RequestRecord) -> None:
        if not record.is_finished:
            raise RuntimeError("only a finished record is logged")
        # The hot line, one per request: rendered from the record's fields as the chain would render
        # it (the same bytes: tests/test_record.py), without the chain's per-call copies of the
        # fields, which cost twice the rendering (bench/README.md, "Edge comparison").
        line = record.fields()
        line["event"] = "request"
        self._writer.write(orjson.dumps(line, default=repr, option=orjson.OPT_APPEND_NEWLINE))

    def event(self, name: str, **fields: Any) -> None:
        """A line about the gateway or a connection rather than a request (`event` says which, never
        "request"): the shared store, the connection cap, a malformed request, a slow head.
        See docs/log-schema.md."""
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self._log.info(name, schema=SCHEMA_VERSION, ts=ts, **fields)

    def close(self) -> None:
        self._writer.close()
        if self._file is not None:
            self._file.close()
            self._file = None
