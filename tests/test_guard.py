"""The canary guard's statistics (gateway/guard.py) on seeded simulated streams: no sockets.

Each simulation draws a route's finished requests in arrival order: the arm by its weight, then
an error with the arm's error rate, else a lognormal TTFT around the arm's median. The figures
the issue asks for (false-trip rate, requests to trip) come from these same runs.
"""

from __future__ import annotations

import random
import statistics

from gateway.guard import ArmGuard, Outcome, RouteGuard, SignTest


def simulate(seed: int, requests: int, *, canary_share: float = 0.1, control_errors: float = 0.01,
             canary_errors: float = 0.01, control_ttft: float = 200.0, canary_ttft: float = 200.0,
             confidence: float = 0.95) -> int | None:
    """How many requests of the route until the guard trips (None: it never did)."""
    rng = random.Random(seed)
    guard = RouteGuard(["control", "canary"], alpha=1 - confidence)
    for n in range(1, requests + 1):
        canary = rng.random() < canary_share
        error = rng.random() < (canary_errors if canary else control_errors)
        ttft = None if error else (canary_ttft if canary else control_ttft) * rng.lognormvariate(0, 0.5)
        if guard.observe("canary" if canary else "control", Outcome(error, ttft)) is not None:
            return n
    return None


def test_a_a_runs_trip_in_at_most_5_percent_of_20_seeded_runs_of_5000_requests() -> None:
    trips = [simulate(seed, 5000) for seed in range(20)]
    assert sum(t is not None for t in trips) <= 1  # 5% of 20


def test_a_a_with_an_even_split_trips_in_at_most_5_percent_of_runs() -> None:
    trips = [simulate(seed, 5000, canary_share=0.5) for seed in range(20)]
    assert sum(t is not None for t in trips) <= 1


def test_a_canary_with_5x_the_control_error_rate_trips_within_a_bounded_number_of_requests() -> None:
    trips = [simulate(seed, 30_000, control_errors=0.01, canary_errors=0.05) for seed in range(20)]
    assert all(t is not None for t in trips)
    # A 10% canary: about a tenth of these are canary requests.
    assert statistics.median(t for t in trips if t is not None) < 8_000


def test_a_canary_with_twice_the_control_ttft_trips() -> None:
    trips = [simulate(seed, 5000, canary_ttft=400.0) for seed in range(20)]
    assert all(t is not None for t in trips)
    assert statistics.median(t for t in trips if t is not None) < 1_000


def test_a_canary_better_on_both_statistics_never_trips() -> None:
    trips = [simulate(seed, 5000, control_errors=0.05, canary_errors=0.01, control_ttft=400.0)
             for seed in range(20)]
    assert trips == [None] * 20


def test_the_sign_test_trips_when_its_wealth_reaches_one_over_alpha() -> None:
    test = SignTest(alpha=0.05)
    while not test.tripped:
        test.observe(canary_worse=True)
    assert test.wealth >= 20 and test.pairs == 8


def test_a_fair_coin_keeps_the_sign_test_wealth_a_fair_bet() -> None:
    # A test martingale: its mean stays 1 (within the simulation's error) at any fixed time.
    rng = random.Random(7)
    finals = []
    for _ in range(2000):
        test = SignTest(alpha=0.05)
        for _ in range(30):
            test.observe(canary_worse=rng.random() < 0.5)
        finals.append(test.wealth)
    assert 0.9 < statistics.fmean(finals) < 1.1


def test_only_discordant_pairs_count() -> None:
    guard = ArmGuard(alpha=0.05)
    guard.observe(Outcome(error=True, ttft_ms=None), control=True)
    guard.observe(Outcome(error=True, ttft_ms=None), control=False)  # both failed: says nothing
    guard.observe(Outcome(error=False, ttft_ms=100.0), control=True)
    guard.observe(Outcome(error=False, ttft_ms=100.0), control=False)  # a tie: says nothing
    assert guard.pairs == 2 and guard.errors.pairs == 0 and guard.ttft.pairs == 0


def test_a_tripped_arm_stays_tripped_until_reset() -> None:
    guard = RouteGuard(["control", "canary"], alpha=0.05)
    tripped = None
    while tripped is None:
        guard.observe("control", Outcome(False, 100.0))
        tripped = guard.observe("canary", Outcome(True, None))
    assert tripped[0] == "canary" and tripped[1].statistic == "error_rate"
    assert guard.observe("canary", Outcome(True, None)) is None and guard.arms["canary"].verdict is not None
    guard.reset("canary")
    assert guard.arms["canary"].verdict is None and guard.arms["canary"].pairs == 0


def test_unpaired_observations_are_kept_to_a_bound() -> None:
    guard = RouteGuard(["control", "canary"], alpha=0.05)
    for _ in range(1000):
        guard.observe("control", Outcome(False, 100.0))
    assert len(guard.arms["canary"]._control) == RouteGuard.BACKLOG
