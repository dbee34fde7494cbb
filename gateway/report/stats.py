"""Pure statistics for the report: percentiles, binomial intervals and tests,
Mann-Whitney U, median standard errors.  Standard library only."""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Iterable
from itertools import accumulate, repeat
from statistics import NormalDist
from typing import Any

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
    return min(1.0, 2.0 * _N.cdf(-abs(z)))


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


def mann_whitney_u(a: Iterable[float], b: Iterable[float]) -> tuple[float, float, float]:
    """Two-sided Mann-Whitney U test of samples a and b.

    Returns ``(U_a, p, prob)`` where U_a counts pairs with a > b (ties 1/2),
    p uses the normal approximation with tie and continuity correction, and
    prob = P(a < b) + P(a = b)/2 = 1 - U_a/(n_a n_b).

    Mid-ranks from value counts (Counter per sample), then one walk over
    the distinct values in order with cumulative counts -- all in C-level
    iterators (map/accumulate), exact integer arithmetic.  The ordered
    distinct values come from sorting the (few, at the log's 0.1 ms
    resolution) distinct values, or -- when most values are distinct -- from
    merging the two samples (timsort merges sorted runs in O(n)) and
    de-duplicating in order.
    """
    if not isinstance(a, list):
        a = list(a)
    if not isinstance(b, list):
        b = list(b)
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        raise ValueError("both samples need at least one observation")
    ca = Counter(a)
    cb = Counter(b)
    if len(ca) + len(cb) < (n1 + n2) // 2:
        keys = sorted(ca.keys() | cb.keys())
    else:
        keys = list(dict.fromkeys(sorted(sorted(a) + sorted(b))))
    k = len(keys)
    ka = list(map(ca.get, keys, repeat(0, k)))
    t = list(map(operator.add, ka, map(cb.get, keys, repeat(0, k))))
    # twice the mid-rank of a value = 2 * (count below) + t + 1 = 2 * cum - t + 1
    twice_mid = map(operator.sub, map(operator.mul, accumulate(t), repeat(2, k)),
                    map(operator.sub, t, repeat(1, k)))
    r1x2 = sum(map(operator.mul, ka, twice_mid))
    n = n1 + n2
    ties = sum(map(pow, t, repeat(3, k))) - n
    u1 = r1x2 / 2 - n1 * (n1 + 1) / 2
    mu = n1 * n2 / 2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    prob = 1 - u1 / (n1 * n2)
    if var <= 0:
        return u1, 1.0, prob
    z = max(0.0, abs(u1 - mu) - 0.5) / math.sqrt(var)
    return u1, _two_sided_p(z), prob


def _binom_half_cdf(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) <= k); exact up to n = 1000, normal approx beyond."""
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


def _mean_var(xs: Any) -> tuple[float, float]:
    """Mean and sample variance; exact-rounded sums (fsum) keep the
    sum-of-squares form accurate enough for cost data."""
    n = len(xs)
    total = math.fsum(xs)
    m = total / n
    if n < 2:
        return m, 0.0
    ss = math.fsum(map(operator.mul, xs, xs))
    return m, max(0.0, (ss - total * m) / (n - 1))
