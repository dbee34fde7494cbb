"""The live canary guard's statistics: is a canary arm worse than the control, yet?

No I/O. Every finished request of a guarded route is one observation of its
arm: whether the arm's provider failed it, and its time to first token. The
guard asks after every request, so a fixed-sample test (a t-test or a
chi-squared test run again and again) would raise false alarms far more often
than its nominal rate. Instead each comparison is an always-valid sequential
test: a test martingale, which stays a fair bet while the canary is no worse,
and Ville's inequality bounds the chance that it *ever* reaches 1/alpha by
alpha, however often it is looked at.

The comparison pairs observations: each finished request of one arm with the
newest waiting one of the other (both arms' requests are independent draws,
so a pair is too; with a 90/10 split most control requests wait in vain, and
pairing with the newest keeps a pair close in time, so a change of load over
the day does not look like a difference between the arms). Which requests
are paired depends on their order alone, never on their outcomes. Of a pair
only a *discordant* one says anything:

- errors: exactly one of the two failed. While the canary's error rate is at
  most the control's, the failed one is the canary with chance q <= 1/2
  (the sequential form of McNemar's test);
- TTFT: both succeeded, with different first-token times. While the canary is
  no slower (stochastically), the slower one is the canary with chance
  q <= 1/2 (the sequential sign test, a rank statistic: no assumption about
  the shape of the TTFT distribution, heavy tails included).

Each discordant pair is a bet `1 + lam * (+1 if the canary was worse else -1)`;
under q <= 1/2 its expectation is at most 1, so the running product is a
nonnegative supermartingale. We average the products over a fixed grid of
bet sizes `lam` (a discrete mixture, Robbins' mixture SPRT): the average of
test martingales is one, and it adapts to the unknown size of the difference.
The guard trips when either statistic's wealth reaches 2/alpha (each gets half
of alpha, so the two together keep the false-trip rate at most alpha).

Method: Robbins (1970) "Statistical methods related to the law of the iterated
logarithm" (mixture SPRT); Howard, Ramdas, McAuliffe, Sekhon (2021)
"Time-uniform, nonparametric, nonasymptotic confidence sequences", Annals of
Statistics (Ville's inequality and test supermartingales); Waudby-Smith,
Ramdas (2023) "Estimating means of bounded random variables by betting", JRSS B
(betting wealth as evidence).

    >>> test = SignTest(alpha=0.05)
    >>> for _ in range(7):
    ...     test.observe(canary_worse=True)
    >>> test.tripped, round(test.wealth, 1)  # 7 in a row: not yet 20 (1/alpha)
    (False, 14.8)
    >>> test.observe(canary_worse=True)
    >>> test.tripped, round(test.wealth, 1)
    (True, 23.8)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# Bet sizes of the mixture: small ones win slowly on small differences, large ones fast on large ones.
LAMBDAS = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.75)


class SignTest:
    """A mixture of betting martingales against "q <= 1/2" for a stream of discordant pairs."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self._wealth = [1.0] * len(LAMBDAS)
        self.pairs = 0  # discordant pairs seen
        self.worse = 0  # of which the canary was the worse one

    @property
    def wealth(self) -> float:
        """The mixture's value: the evidence against "the canary is no worse" (1 at the start)."""
        return sum(self._wealth) / len(self._wealth)

    @property
    def tripped(self) -> bool:
        return self.wealth >= 1 / self.alpha

    def observe(self, *, canary_worse: bool) -> None:
        sign = 1.0 if canary_worse else -1.0
        self._wealth = [w * (1 + lam * sign) for w, lam in zip(self._wealth, LAMBDAS)]
        self.pairs += 1
        self.worse += canary_worse


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished request of an arm, as the guard sees it."""

    error: bool  # the arm's own provider failed it
    ttft_ms: float | None  # the arm's own provider's first token; None when it served no token


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a canary tripped: the statistic, and the figures behind it (for the `guard` log event)."""

    statistic: str  # "error_rate" | "ttft"
    wealth: float
    threshold: float
    discordant_pairs: int
    canary_worse: int
    pairs: int


class ArmGuard:
    """One canary arm compared with the control."""

    def __init__(self, alpha: float) -> None:
        self.errors = SignTest(alpha / 2)
        self.ttft = SignTest(alpha / 2)
        self._control: deque[Outcome] = deque()
        self._canary: deque[Outcome] = deque()
        self.pairs = 0
        self.verdict: Verdict | None = None

    def observe(self, outcome: Outcome, *, control: bool) -> Verdict | None:
        """Add one finished request; returns the verdict when this observation trips the guard."""
        if self.verdict is not None:
            return None  # tripped: only a person turns it back on (a fresh ArmGuard)
        (self._control if control else self._canary).append(outcome)
        while self._control and self._canary:  # the newcomer, and the newest waiting on the other side
            self._pair(self._control.pop(), self._canary.pop())
            for name, test in (("error_rate", self.errors), ("ttft", self.ttft)):
                if test.tripped:
                    self.verdict = Verdict(name, round(test.wealth, 3), round(1 / test.alpha, 3), test.pairs,
                                           test.worse, self.pairs)
                    return self.verdict
        return None

    def _pair(self, control: Outcome, canary: Outcome) -> None:
        self.pairs += 1
        if control.error != canary.error:
            self.errors.observe(canary_worse=canary.error)
        elif control.ttft_ms is not None and canary.ttft_ms is not None and control.ttft_ms != canary.ttft_ms:
            self.ttft.observe(canary_worse=canary.ttft_ms > control.ttft_ms)

    def trim(self, keep: int) -> None:
        """Keep at most `keep` observations waiting on each side, dropping the oldest (they would only
        be paired last). Which ones are dropped depends on order alone, never on outcomes."""
        for side in (self._control, self._canary):
            while len(side) > keep:
                side.popleft()


class RouteGuard:
    """A route's guard: the first arm is the control, every other arm a canary compared with it."""

    BACKLOG = 64  # observations waiting for a partner, per side and canary

    def __init__(self, arms: list[str], alpha: float) -> None:
        self.control = arms[0]
        self.alpha = alpha
        self.arms = {name: ArmGuard(alpha) for name in arms[1:]}

    def observe(self, arm: str, outcome: Outcome) -> tuple[str, Verdict] | None:
        """Feed one finished request of `arm`; returns (canary, verdict) when a canary trips."""
        if arm == self.control:
            for name, guard in self.arms.items():
                verdict = guard.observe(outcome, control=True)
                guard.trim(self.BACKLOG)
                if verdict is not None:
                    return name, verdict
            return None
        canary = self.arms.get(arm)
        if canary is None:
            return None
        verdict = canary.observe(outcome, control=False)
        canary.trim(self.BACKLOG)
        return (arm, verdict) if verdict is not None else None

    def reset(self, arm: str) -> None:
        """A person turned the arm back on: its evidence starts afresh."""
        if arm in self.arms:
            self.arms[arm] = ArmGuard(self.alpha)
