"""Prometheus metrics, fed once per request from the same record as the log line.

One process: each app has its own registry. Several worker processes: set
PROMETHEUS_MULTIPROC_DIR to an empty directory shared by the workers (before
they start); every worker writes its values there and any worker's /metrics
answers with the sum over all of them (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

from .record import RequestRecord

# LLM streams live in seconds, not milliseconds: first tokens from 50 ms to a
# minute (reasoning models), whole responses up to the 10-minute deadline.
TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 13, 20, 30, 60)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 90, 120, 180, 300, 600)
LABELS = ("route", "arm", "provider")


UNKNOWN_ROUTE = "(unknown)"  # every model name no route has: a client never mints a label


class Metrics:
    def __init__(self, routes: Iterable[str] = ()) -> None:
        self._routes = frozenset(routes)
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # In multiprocess mode values live in files, not in a registry.
        self._registry = None if self.multiprocess else CollectorRegistry()
        r = self._registry
        self.requests = Counter("gateway_requests", "Chat requests by outcome", (*LABELS, "outcome"), registry=r)
        self.ttft = Histogram("gateway_ttft_seconds", "Time to first content token written to the client",
                              LABELS, buckets=TTFT_BUCKETS, registry=r)
        self.latency = Histogram("gateway_request_duration_seconds", "Time to the end of the response",
                                 LABELS, buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("gateway_tokens", "Tokens by kind (prompt, completion)", (*LABELS, "kind"),
                              registry=r)
        self.cost = Counter("gateway_cost_usd", "Cost in USD from the pricing table", LABELS, registry=r)
        self.in_flight = Gauge("gateway_requests_in_flight", "Chat requests being handled", ("endpoint",),
                               registry=r, multiprocess_mode="livesum")
        self.upstream_in_use = Gauge("gateway_upstream_connections_in_use",
                                     "Upstream connections held by requests, per provider pool", ("provider",),
                                     registry=r, multiprocess_mode="livesum")
        self.ratelimited = Counter("gateway_ratelimited", "Requests refused by a key's limit", ("key", "limit"),
                                   registry=r)
        self.ratelimit_remaining = Gauge("gateway_ratelimit_remaining", "What a key had left at its last request",
                                         ("key", "limit"), registry=r, multiprocess_mode="mostrecent")
        self.upstream_limit = Gauge("gateway_upstream_connections_limit", "Pool size per provider",
                                    ("provider",), registry=r, multiprocess_mode="max")

        self.hedges = Counter("gateway_hedges", "Hedged first tokens: started, won by the hedge, or wanted but "
                              "refused by the route's budget", ("route", "arm", "event"), registry=r)
        self.guard_trips = Counter("gateway_guard_trips", "Canary arms the guard sent to weight 0",
                                   ("route", "arm", "statistic"), registry=r)
        self.guard_tripped = Gauge("gateway_guard_tripped", "1 while the arm is tripped (live weight 0 by the guard)",
                                   ("route", "arm"), registry=r, multiprocess_mode="max")

        if r is not None:
            # One process: its own fds and memory, and the event loop's task count, for leak checks.
            ProcessCollector(registry=r)
            tasks = Gauge("gateway_event_loop_tasks", "asyncio tasks alive in this process", registry=r)
            tasks.set_function(_task_count)

    def observe(self, record: RequestRecord) -> None:
        # Labels only from configured names: route, arm and provider are set from the config,
        # except the route a client asked for, which is checked against it.
        route = record.route if record.route in self._routes else UNKNOWN_ROUTE
        labels = (route, record.arm or "", record.provider or "")
        self._child(self.requests, *labels, record.outcome).inc()
        if record.hedged:
            self.hedges.labels(route, record.arm or "", "started").inc()
            if record.hedge_winner is not None and any(d["hedge"] and d["result"] == "won"
                                                       for d in record.attempts_detail):
                self.hedges.labels(route, record.arm or "", "won_by_hedge").inc()
        if record.hedge_denied:
            self.hedges.labels(route, record.arm or "", "budget_exhausted").inc()
        if record.ttft_ms is not None:
            self._child(self.ttft, *labels).observe(record.ttft_ms / 1000)
        if record.latency_ms is not None:
            self._child(self.latency, *labels).observe(record.latency_ms / 1000)
        if record.prompt_tokens:
            self._child(self.tokens, *labels, "prompt").inc(record.prompt_tokens)
        if record.completion_tokens:
            self._child(self.tokens, *labels, "completion").inc(record.completion_tokens)
        if record.cost_usd:
            self._child(self.cost, *labels).inc(record.cost_usd)
        if record.ratelimit is not None and record.key_name is not None:  # key names come from the config
            for limit in ("concurrent", "rpm", "tpm"):
                if limit in record.ratelimit:
                    self.ratelimit_remaining.labels(record.key_name, limit).set(record.ratelimit[limit]["remaining"])
            if record.ratelimit.get("hit"):
                self.ratelimited.labels(record.key_name, record.ratelimit["hit"]).inc()

    def _child(self, metric: Counter | Histogram, *values: str) -> Any:
        """`metric.labels(*values)`, looked up once: prometheus_client checks and locks on every call,
        and each request observes five or six. Label values come from config names (bounded)."""
        child = self._children.get((metric, values))
        if child is None:
            child = self._children[(metric, values)] = metric.labels(*values)
        return child

    def render(self) -> tuple[bytes, str]:
        registry = self._registry
        if registry is None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def _task_count() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # scraped outside the loop
        return 0.0
