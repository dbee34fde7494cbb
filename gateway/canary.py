"""The canary guard at work: finished requests in, a tripped canary out (to weight 0, logged, counted).

The statistics are guard.py's; this module only says what a finished record
means for its arm (`outcome_of`), keeps one `RouteGuard` per guarded route,
and acts on a verdict through the live routes (live.py). Each worker judges
its own requests, so its false-trip rate is the route's `1 - confidence`
divided by the number of workers: all of them together stay within it.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .config import Config, Route
from .guard import Outcome, RouteGuard, Verdict
from .hedge import nearest_rank
from .record import RequestRecord

# Failures that say nothing about a provider: the client's, the gateway's own capacity and lifetime.
NOT_THE_ARMS = frozenset({"client_error", "rate_limited", "client_disconnected", "overloaded", "shutdown"})


def outcome_of(record: RequestRecord, arm_provider: str) -> Outcome | None:
    """What a finished request says about its arm's own provider; None when it says nothing.

    An error: the arm's provider failed an attempt, or the request failed upstream. A TTFT: the arm's
    provider's own first token, or, when a hedge beat it, the time the hedge served its first token
    (a lower bound: the arm had not answered by then)."""
    if record.arm is None or record.outcome in NOT_THE_ARMS:
        return None
    own = [d for d in record.attempts_detail if d["provider"] == arm_provider and not d["hedge"]]
    if record.outcome != "ok" or any(d["error"] for d in own):
        return Outcome(error=True, ttft_ms=None)
    for detail in own:
        if detail["result"] == "won":
            return Outcome(error=False, ttft_ms=detail["ttft_ms"])
        if detail["result"] == "lost":
            return Outcome(error=False, ttft_ms=record.ttft_ms)
    return None  # served by a fallback without the arm's provider failing: nothing to say


class ArmFigures:
    """An arm's last `window` finished requests: how many, the error rate, TTFT p50/p95 (the admin API's)."""

    def __init__(self, window: int = 500) -> None:
        self.requests = 0
        self._recent: deque[Outcome] = deque(maxlen=window)

    def add(self, outcome: Outcome) -> None:
        self.requests += 1
        self._recent.append(outcome)

    def summary(self) -> dict[str, Any]:
        recent = list(self._recent)
        ttfts = [o.ttft_ms for o in recent if o.ttft_ms is not None]
        return {"requests": self.requests, "window": len(recent),
                "error_rate": round(sum(o.error for o in recent) / len(recent), 4) if recent else None,
                "ttft_p50_ms": nearest_rank(ttfts, 0.5) if ttfts else None,
                "ttft_p95_ms": nearest_rank(ttfts, 0.95) if ttfts else None}


class CanaryGuard:
    def __init__(self, config: Config, *, workers: int = 1) -> None:
        self.config = config
        self.guards = {name: RouteGuard([arm.name for arm in route.arms], (1 - route.guard.confidence) / workers)
                       for name, route in config.routes.items() if route.guard is not None and len(route.arms) > 1}
        self.figures: dict[tuple[str, str], ArmFigures] = {}

    def observe(self, record: RequestRecord) -> tuple[Route, str, Verdict] | None:
        """Feed a finished record; returns (route, canary, verdict) when it trips a canary."""
        route = self.config.routes.get(record.route or "")
        arm = next((a for a in route.arms if a.name == record.arm), None) if route is not None else None
        if route is None or arm is None:
            return None
        outcome = outcome_of(record, arm.provider)
        if outcome is None:
            return None
        self.figures.setdefault((route.name, arm.name), ArmFigures()).add(outcome)
        guard = self.guards.get(route.name)
        tripped = guard.observe(arm.name, outcome) if guard is not None else None
        if tripped is None:
            return None
        canary, verdict = tripped
        return route, canary, verdict

    def arm_figures(self, route: str, arm: str) -> dict[str, Any]:
        return self.figures.get((route, arm), ArmFigures()).summary()

    def stats(self, route: str, arm: str) -> dict[str, Any] | None:
        guard = self.guards.get(route)
        if guard is None or arm not in guard.arms:
            return None
        g = guard.arms[arm]
        return {"pairs": g.pairs, "error_rate_evidence": round(g.errors.wealth, 3),
                "ttft_evidence": round(g.ttft.wealth, 3), "threshold": round(2 / guard.alpha, 3),
                "tripped": g.verdict is not None}

    def untrip(self, route: str, tripped_now: set[str]) -> None:
        """Arms a person turned back on (not tripped in the live state any more) start afresh."""
        guard = self.guards.get(route)
        if guard is None:
            return
        for name, arm in guard.arms.items():
            if arm.verdict is not None and name not in tripped_now:
                guard.reset(name)
