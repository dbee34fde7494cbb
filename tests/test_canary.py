"""What a finished request says about its arm's provider (gateway/canary.py): the guard's input."""

from __future__ import annotations

from gateway.canary import ArmFigures, outcome_of
from gateway.config import Target
from gateway.guard import Outcome
from gateway.record import RequestRecord


def record(outcome: str = "ok", ttft_ms: float | None = 120.0) -> RequestRecord:
    r = RequestRecord("req", "chat_completions", route="chat", arm="canary", outcome=outcome)
    r.ttft_ms = ttft_ms
    return r


def test_the_arms_own_first_token_is_its_ttft() -> None:
    r = record()
    n = r.attempt_started(Target("can", "m"), fallback=False)
    r.attempts_detail[n]["ttft_ms"] = 95.0
    r.attempt_won(n)
    assert outcome_of(r, "can") == Outcome(error=False, ttft_ms=95.0)


def test_a_failed_attempt_of_the_arms_provider_is_an_error_even_when_the_fallback_served() -> None:
    r = record()
    r.attempt_failed(r.attempt_started(Target("can", "m"), fallback=False), "upstream_error")
    r.attempt_won(r.attempt_started(Target("cheap", "m"), fallback=True))
    assert outcome_of(r, "can") == Outcome(error=True, ttft_ms=None)


def test_a_race_the_arm_lost_gives_the_hedges_first_token_as_a_lower_bound() -> None:
    r = record(ttft_ms=640.0)
    r.hedge_started()
    arm = r.attempt_started(Target("can", "m"), fallback=False)
    r.attempt_won(r.attempt_started(Target("cheap", "m"), fallback=True, hedge=True))
    r.attempt_lost(arm)
    assert outcome_of(r, "can") == Outcome(error=False, ttft_ms=640.0)


def test_the_clients_own_failures_say_nothing_about_the_provider() -> None:
    for outcome in ("client_error", "rate_limited", "client_disconnected", "overloaded", "shutdown"):
        assert outcome_of(record(outcome=outcome), "can") is None


def test_an_upstream_failure_of_the_request_is_an_error() -> None:
    r = record(outcome="timeout_first_token", ttft_ms=None)
    r.attempt_failed(r.attempt_started(Target("can", "m"), fallback=False), "timeout_first_token")
    assert outcome_of(r, "can") == Outcome(error=True, ttft_ms=None)


def test_live_figures_cover_the_last_window_of_requests() -> None:
    figures = ArmFigures(window=4)
    for ttft in (100.0, 200.0, 300.0, 400.0, 500.0):
        figures.add(Outcome(False, ttft))
    figures.add(Outcome(True, None))
    summary = figures.summary()
    assert (summary["requests"], summary["window"], summary["error_rate"]) == (6, 4, 0.25)
    assert (summary["ttft_p50_ms"], summary["ttft_p95_ms"]) == (400.0, 500.0)
