"""When to hedge a slow first token: the delay, and a budget that stops hedging storms.

No I/O: the relay (relay.py) asks `Hedger.delay_s` how long to wait for the
arm's first content event before it also starts the next candidate, asks
`Hedger.spend` whether the budget allows it, and feeds back every request and
every first-token time. The clock is passed in, so every decision is testable.

- A fixed delay (`after_ms = 500`) or an adaptive one (`after_ms = "p95"`):
  the arm's own TTFT p95 over its last `window` requests, never below
  `floor_ms`, and `warmup_ms` until `min_samples` have been seen.
- The budget: hedges may be at most `budget_percent` of the route's requests
  over a sliding `budget_window_s`. When a whole provider slows down every
  request wants a hedge; the budget keeps the fallback's extra load at that
  share instead of doubling it, and the rest wait as they would without hedging.

State is per process (each worker hedges within its own share of the budget).

    >>> from gateway.config import Hedge
    >>> h = Hedger(Hedge(after_ms=500, budget_percent=10))
    >>> h.delay_s("control")
    0.5
    >>> for _ in range(10):
    ...     h.admit(now=0.0)
    >>> h.spend(now=0.0), h.spend(now=0.0)  # 1 hedge in 10 requests is 10%; a second would be 20%
    (True, False)
"""

from __future__ import annotations

import math
from collections import deque

from .config import Hedge


def nearest_rank(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank (no interpolation: a value that was observed).

        >>> nearest_rank([5.0, 1.0, 3.0, 2.0, 4.0], 0.95)
        5.0
    """
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class TtftTracker:
    """An arm's recent first-token times: the last `window`, for its live p50/p95."""

    def __init__(self, window: int) -> None:
        self._recent: deque[float] = deque(maxlen=window)

    def observe(self, ttft_ms: float) -> None:
        self._recent.append(ttft_ms)

    def __len__(self) -> int:
        return len(self._recent)

    def quantile(self, q: float) -> float | None:
        return nearest_rank(list(self._recent), q) if self._recent else None


class Budget:
    """Hedges as a share of requests over a sliding window, counted in one-second buckets
    (bounded memory, whatever the request rate)."""

    def __init__(self, percent: float, window_s: float) -> None:
        self.percent, self.window_s = percent, window_s
        self._buckets: deque[list[int]] = deque()  # [second, requests, hedges], oldest first

    def _bucket(self, now: float) -> list[int]:
        second = math.floor(now)
        while self._buckets and self._buckets[0][0] <= second - self.window_s:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        return self._buckets[-1]

    def request(self, now: float) -> None:
        self._bucket(now)[1] += 1

    def spend(self, now: float) -> bool:
        """One hedge, if it keeps hedges within `percent` of the window's requests."""
        current = self._bucket(now)
        requests = sum(b[1] for b in self._buckets)
        hedges = sum(b[2] for b in self._buckets)
        if (hedges + 1) * 100 > self.percent * requests:
            return False
        current[2] += 1
        return True


class Hedger:
    """One route's hedging: its delay per arm and its budget."""

    def __init__(self, config: Hedge) -> None:
        self.config = config
        self.budget = Budget(config.budget_percent, config.budget_window_s)
        self._ttft: dict[str, TtftTracker] = {}

    def tracker(self, arm: str) -> TtftTracker:
        return self._ttft.setdefault(arm, TtftTracker(self.config.window))

    def delay_s(self, arm: str) -> float:
        """How long after the request started to wait for the arm's first content event."""
        c = self.config
        if c.after_ms is not None:
            return c.after_ms / 1000
        tracker = self.tracker(arm)
        p95 = tracker.quantile(0.95)
        if p95 is None or len(tracker) < c.min_samples:
            return c.warmup_ms / 1000
        return max(c.floor_ms, p95) / 1000

    def admit(self, now: float) -> None:
        """A request of the route started (the budget's denominator)."""
        self.budget.request(now)

    def spend(self, now: float) -> bool:
        return self.budget.spend(now)

    def observe(self, arm: str, ttft_ms: float) -> None:
        """The arm's own provider produced its first content event after `ttft_ms`."""
        self.tracker(arm).observe(ttft_ms)
