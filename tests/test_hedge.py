"""When to hedge (gateway/hedge.py): the delay, the adaptive p95, the budget. No sockets, no loop."""

from __future__ import annotations

from gateway.config import Hedge
from gateway.hedge import Budget, Hedger, TtftTracker, nearest_rank


def test_a_fixed_delay_is_after_ms() -> None:
    assert Hedger(Hedge(after_ms=250)).delay_s("control") == 0.25


def test_the_adaptive_delay_is_the_warmup_until_enough_first_tokens() -> None:
    hedger = Hedger(Hedge(after_ms=None, warmup_ms=800, min_samples=5))
    for ms in (100, 120, 130, 140):
        hedger.observe("control", ms)
    assert hedger.delay_s("control") == 0.8


def test_the_adaptive_delay_is_the_arms_own_p95() -> None:
    hedger = Hedger(Hedge(after_ms=None, min_samples=20, floor_ms=10))
    for ms in range(1, 101):
        hedger.observe("control", 10.0 * ms)
    hedger.observe("canary", 5000.0)
    assert hedger.delay_s("control") == 0.95


def test_the_adaptive_delay_never_falls_below_the_floor() -> None:
    hedger = Hedger(Hedge(after_ms=None, min_samples=1, floor_ms=150))
    hedger.observe("control", 20.0)
    assert hedger.delay_s("control") == 0.15


def test_the_p95_is_over_the_last_window_only() -> None:
    tracker = TtftTracker(window=10)
    for ms in [5000.0] * 10 + [100.0] * 10:
        tracker.observe(ms)
    assert tracker.quantile(0.95) == 100.0


def test_nearest_rank_returns_an_observed_value() -> None:
    assert nearest_rank([3.0, 1.0, 2.0], 0.5) == 2.0


def test_the_budget_caps_hedges_at_the_percentage_of_requests() -> None:
    budget = Budget(percent=10, window_s=60)
    for _ in range(100):
        budget.request(now=1.0)
    spent = [budget.spend(now=1.0) for _ in range(50)]
    assert sum(spent) == 10  # a slow provider wants 50 hedges; the fallback gets 10


def test_the_budget_slides_old_requests_and_hedges_out() -> None:
    budget = Budget(percent=50, window_s=10)
    budget.request(now=0.0)
    budget.request(now=0.0)
    assert budget.spend(now=0.0) and not budget.spend(now=0.0)
    budget.request(now=10.5)  # the first second has left the window: 1 request, 0 hedges
    budget.request(now=10.5)
    assert budget.spend(now=10.5)


def test_no_requests_no_hedges() -> None:
    assert not Budget(percent=100, window_s=60).spend(now=0.0)
