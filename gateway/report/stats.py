"""Pure statistics for the report: percentiles, binomial intervals and tests,
Mann-Whitney U, Welch's t-test, median standard errors.  numpy and scipy
come with the ``report`` extra."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy import special, stats

ALPHA = 0.05
_N = NormalDist()
Z95 = _N.inv_cdf(1 - ALPHA / 2)  # 1.959963984540054


def percentile(sorted_xs: Any, p: float) -> float | None:
    """The p-th percentile (0..100) of an ascending sequence, type-7 linear
    interpolation (numpy's default).  ``None`` for an empty sequence."""
    n = len(sorted_xs)
    if n == 0:
        return None
    if not 0 <= p <= 100:
        raise ValueError("percentile must be within 0..100")
    h = (n - 1) * p / 100.0
    lo = math.floor(h)
    if lo >= n - 1:
        return float(sorted_xs[n - 1])
    frac = h - lo
    a = sorted_xs[lo]
    return float(a + frac * (sorted_xs[lo + 1] - a))


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion; ``None`` if n == 0."""
    if n <= 0:
        return None
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def _two_sided_p(z: float) -> float:
    # erfc keeps its relative precision in the far tail, where 1 - cdf(|z|)
    # rounds to 0 beyond |z| ~ 8.3 (and loses digits from |z| ~ 7).
    return min(1.0, math.erfc(abs(z) / math.sqrt(2.0)))


def two_proportion_z_test(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Pooled two-proportion z-test of x1/n1 vs x2/n2: ``(z, two-sided p)``."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError("both samples need at least one observation")
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / se
    return z, _two_sided_p(z)


def newcombe_diff_interval(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """95 % CI of p1 - p2 by Newcombe's hybrid score method (method 10)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1)  # type: ignore[misc]
    l2, u2 = wilson_interval(x2, n2)  # type: ignore[misc]
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


class Sample:
    """A sample held as its distinct values (ascending) and their counts.

    It indexes like the sorted sample (``s[i]`` is the (i+1)-th smallest
    value, ``len(s)`` the sample size), so ``percentile`` and ``median_se``
    read order statistics from it directly.  Logs keep 0.1 ms resolution, so
    a million durations have a few ten thousand distinct values, and the
    statistics work on those.
    """

    __slots__ = ("values", "counts", "cum", "n")

    def __init__(self, values: Any, counts: Any) -> None:
        self.values = np.asarray(values, dtype=np.float64)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.cum = np.cumsum(self.counts)
        self.n = int(self.cum[-1]) if len(self.cum) else 0

    @classmethod
    def of(cls, xs: Any) -> Sample:
        if isinstance(xs, Sample):
            return xs
        # an array as it is: list() of a million floats costs more than the sort
        xs = np.asarray(xs if isinstance(xs, np.ndarray) else list(xs), dtype=np.float64)
        values, counts = np.unique(xs, return_counts=True)
        return cls(values, counts)

    @classmethod
    def merged(cls, *samples: Sample) -> Sample:
        """The samples' values together, from their distinct values and counts:
        a sort of the distinct values (a few ten thousand), not of every value."""
        values, where = np.unique(np.concatenate([s.values for s in samples]), return_inverse=True)
        counts = np.zeros(len(values), dtype=np.int64)
        np.add.at(counts, where, np.concatenate([s.counts for s in samples]))
        return cls(values, counts)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> float:
        if not -self.n <= i < self.n:
            raise IndexError(i)
        if i < 0:
            i += self.n
        return float(self.values[int(self.cum.searchsorted(i + 1))])

    def mean(self) -> float | None:
        """Exactly rounded mean (fsum), computed on values scaled by a power
        of two so that no partial sum of finite values can overflow."""
        if not self.n:
            return None
        exp = math.frexp(float(self.values[-1]))[1] if self.values[-1] > 0 else 0
        total = math.fsum((np.ldexp(self.values, -exp) * self.counts).tolist())
        try:
            return math.ldexp(total / self.n, exp)
        except OverflowError:  # unreachable for a mean of finite values; kept as a guard
            return None

    def expand(self) -> Any:
        return np.repeat(self.values, self.counts)


# scipy.stats.mannwhitneyu's own rule for its exact method (one sample of at
# most 8, no ties), capped on the other sample: the exact null distribution
# costs O(n1 * n2) per value and takes ~50 s at 5 vs 100,000, where the normal
# approximation is accurate anyway.
_EXACT_MAX_SMALL = 8
_EXACT_MAX_OTHER = 1000


def mann_whitney_u(a: Any, b: Any) -> tuple[float, float, float]:
    """Two-sided Mann-Whitney U test of samples a and b (sequences or
    ``Sample``).

    Returns ``(U_a, p, prob)`` where U_a counts pairs with a > b (ties 1/2)
    and prob = P(a < b) + P(a = b)/2 = 1 - U_a/(n_a n_b).  p is exact
    (scipy.stats.mannwhitneyu, method "exact") when one sample has at most 8
    values, the other at most 1000, and there are no ties; otherwise the
    normal approximation with tie and continuity correction, computed from
    the distinct values as scipy's "asymptotic" method computes it from
    ranks (same formula, same figures).
    """
    sa, sb = Sample.of(a), Sample.of(b)
    n1, n2 = sa.n, sb.n
    if n1 == 0 or n2 == 0:
        raise ValueError("both samples need at least one observation")
    # Both samples are distinct values with counts, ascending: where each of
    # a's values falls among b's gives the count of b below it and at it
    # (one binary search per value of a, no union of the two arrays).
    ka, kb = sa.counts, sb.counts
    at = sb.values.searchsorted(sa.values)
    below_b = np.concatenate(([0], sb.cum))[at]
    hit = np.minimum(at, len(kb) - 1)
    shared = sb.values[hit] == sa.values
    kb_at = np.where(shared, kb[hit], 0)
    # 2 U_a = sum over values of count_a * (2 * count_b below + count_b at), exact in int64
    u1 = int(np.dot(ka, 2 * below_b + kb_at)) / 2
    prob = 1 - u1 / (n1 * n2)
    ties = bool((ka > 1).any() or (kb > 1).any() or shared.any())
    if min(n1, n2) <= _EXACT_MAX_SMALL and max(n1, n2) <= _EXACT_MAX_OTHER and not ties:
        p = float(stats.mannwhitneyu(sa.expand(), sb.expand(), method="exact").pvalue)
        return u1, p, prob
    n = n1 + n2
    # t^3 - t summed over the tied groups of both samples pooled: a value in
    # both, with t = ka + kb, adds 3 ka kb (ka + kb) to each sample's own term
    # (sums of products, not np.dot: a float dot product goes to BLAS, whose
    # threads spin on the cores after it)
    fa, fb = ka.astype(np.float64), kb.astype(np.float64)
    both_a, both_b = fa[shared], kb_at[shared].astype(np.float64)   # the counts of the shared values
    tie_term = (float(np.sum(fa * fa * fa)) - n1 + float(np.sum(fb * fb * fb)) - n2
                + 3 * float(np.sum(both_a * both_b * (both_a + both_b))))
    var = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return u1, 1.0, prob
    z = (max(u1, n1 * n2 - u1) - n1 * n2 / 2 - 0.5) / math.sqrt(var)
    return u1, min(1.0, 2 * float(special.ndtr(-z))), prob


def welch_test(mean_a: float, var_a: float, n_a: int,
               mean_b: float, var_b: float, n_b: int) -> float | None:
    """Two-sided p of Welch's unequal-variance t-test, from each sample's
    mean, sample variance (ddof 1) and size: scipy.stats.ttest_ind_from_stats,
    the same test as ttest_ind(equal_var=False) without the samples.
    ``None`` when a sample has fewer than 2 values or a figure is not finite."""
    if n_a < 2 or n_b < 2:
        return None
    figures = (mean_a, var_a, mean_b, var_b)
    if not all(math.isfinite(x) for x in figures):
        return None
    if var_a == 0 and var_b == 0:  # no spread: the means either differ or not
        return 1.0 if mean_a == mean_b else 0.0
    res = stats.ttest_ind_from_stats(mean_a, math.sqrt(var_a), n_a, mean_b, math.sqrt(var_b), n_b,
                                     equal_var=False)
    p = float(res.pvalue)
    return p if math.isfinite(p) else None


def _binom_half_cdf(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) <= k); exact up to n = 1000, normal approx beyond.

    Above n = 1000 the normal approximation (with continuity correction)
    replaces the exact sum (O(n) big-integer terms per arm).  The median's
    standard error then stays within a relative 3e-4 of its exact-binomial
    value just above n = 1000 (1.2e-4 at n = 2000, shrinking as 1/n), far
    below the sampling error of the CI itself."""
    if k < 0:
        return 0.0
    if n <= 1000:
        return sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)
    return _N.cdf((k + 0.5 - n / 2) / (math.sqrt(n) / 2))


def median_se(sorted_xs: Any) -> float | None:
    """Bonett & Price (2002) standard error of the sample median of an
    ascending sample: ((x_(n-c+1) - x_(c)) / (2 z_c))^2 with
    c = round((n+1)/2 - sqrt(n)) and z_c the normal quantile matching the
    exact binomial coverage of [x_(c), x_(n-c+1)].  ``None`` if n < 5."""
    n = len(sorted_xs)
    if n < 5:
        return None
    c = max(1, round((n + 1) / 2 - math.sqrt(n)))
    tail = _binom_half_cdf(n, c - 1)
    if not 0 < tail < 0.5:
        return None
    z = _N.inv_cdf(1 - tail)
    return (sorted_xs[n - c] - sorted_xs[c - 1]) / (2 * z)


def median_diff_ci(sorted_a: Any, sorted_b: Any) -> tuple[float, float, float] | None:
    """median(a) - median(b) with its 95 % CI: ``(diff, low, high)``."""
    se_a, se_b = median_se(sorted_a), median_se(sorted_b)
    if se_a is None or se_b is None:
        return None
    d = percentile(sorted_a, 50) - percentile(sorted_b, 50)  # type: ignore[operator]
    half = Z95 * math.sqrt(se_a * se_a + se_b * se_b)
    return d, d - half, d + half
