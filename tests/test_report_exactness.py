"""The report's statistics checked against numpy and scipy, where the audit
found them inexact: far-tail p-values, the cost test, small-sample
Mann-Whitney, the verdict for small arms, the median CI's approximation."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import orjson
import pytest
from scipy import stats

from gateway.report import (
    load,
    mann_whitney_u,
    percentile,
    render_json,
    render_text,
    summarize,
    welch_test,
)
from gateway.report.stats import (
    Sample,
    _binom_half_cdf,
    median_se,
    two_proportion_z_test,
)

from .test_report import as_bytes, record, synth


def report_of(records: list):
    with load([io.BytesIO(as_bytes(records))]) as ds:
        return summarize(ds)


def test_far_tail_p_value_is_not_rounded_to_zero():
    z, p = two_proportion_z_test(600, 3000, 300, 3000)
    assert z > 9
    assert p > 0 and p == pytest.approx(2 * stats.norm.sf(z), rel=1e-12)


def test_far_tail_p_value_reaches_the_json_report():
    rng = random.Random(5)
    recs = synth(rng, "control", 3000, errors=600) + synth(rng, "canary", 3000, errors=300)
    doc = orjson.loads(render_json(report_of(recs)))
    assert 0 < doc["comparisons"][0]["errors"]["p_value"] < 1e-18


def test_welch_test_matches_scipy_ttest_ind_with_unequal_variances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 0.3, 7), rng.normal(1.4, 0.9, 12)
    p = welch_test(a.mean(), a.var(ddof=1), len(a), b.mean(), b.var(ddof=1), len(b))
    assert p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-12)


def test_welch_test_with_5_requests_per_arm_keeps_5_percent_false_positives_in_aa():
    rng = np.random.default_rng(2)
    reps = 4000
    samples = rng.normal(0.002, 0.0005, size=(reps, 2, 5))
    hits = sum(welch_test(x.mean(), x.var(ddof=1), 5, y.mean(), y.var(ddof=1), 5) < 0.05 for x, y in samples)
    assert 0.04 <= hits / reps <= 0.06   # the former z-test gave about 8 %


def test_cost_p_value_in_the_report_is_welchs_t_test():
    rng = random.Random(8)
    recs, costs = [], {"control": [], "canary": []}
    for arm, price in (("control", 0.002), ("canary", 0.0015)):
        for r in synth(rng, arm, 6):
            r["cost_usd"] = round(price * rng.uniform(0.5, 1.5), 6)
            costs[arm].append(r["cost_usd"])
            recs.append(r)
    p = report_of(recs).comparisons[0].cost.p_value
    assert p == pytest.approx(stats.ttest_ind(costs["canary"], costs["control"], equal_var=False).pvalue,
                              rel=1e-9)


def test_mann_whitney_of_small_samples_matches_scipys_exact_method():
    a, b = [3.1, 4.7, 1.2, 9.9, 5.5], [6.0, 7.2, 8.8, 2.4, 10.1, 11.3]
    _, p, _ = mann_whitney_u(a, b)
    assert p == pytest.approx(stats.mannwhitneyu(a, b, method="exact").pvalue, rel=1e-12)


def test_mann_whitney_of_large_samples_with_ties_matches_scipys_asymptotic_method():
    rng = np.random.default_rng(3)
    a = np.round(rng.lognormal(6.0, 0.5, 3000), 1)
    b = np.round(rng.lognormal(6.05, 0.5, 2500), 1)
    u, p, _ = mann_whitney_u(a, b)
    ref = stats.mannwhitneyu(a, b, method="asymptotic")
    assert u == ref.statistic
    assert p == pytest.approx(ref.pvalue, rel=1e-12)


def test_percentiles_of_a_grouped_sample_equal_numpys():
    rng = np.random.default_rng(4)
    xs = np.round(rng.lognormal(6.0, 0.6, 10_001), 1)
    grouped = Sample.of(xs)
    for p in (0, 1, 50, 95, 99, 99.9, 100):
        assert percentile(grouped, p) == pytest.approx(np.percentile(xs, p), rel=1e-13)
    assert grouped.mean() == pytest.approx(xs.mean(), rel=1e-14)


def test_samples_merged_from_their_distinct_values_equal_the_sample_of_all_values():
    rng = np.random.default_rng(5)
    hedged = np.round(rng.lognormal(5.0, 0.5, 3_000), 1)
    other = np.round(rng.lognormal(5.5, 0.5, 20_000), 1)   # shares many values with hedged
    merged = Sample.merged(Sample.of(hedged), Sample.of(other))
    whole = Sample.of(np.concatenate([hedged, other]))
    assert np.array_equal(merged.values, whole.values) and np.array_equal(merged.counts, whole.counts)
    assert len(merged) == 23_000 and percentile(merged, 95) == pytest.approx(np.percentile(whole.expand(), 95))
    empty = Sample.of([])
    assert np.array_equal(Sample.merged(empty, Sample.of(other)).counts, Sample.of(other).counts)
    assert len(Sample.merged(empty, empty)) == 0


def test_small_arms_name_the_faster_arm_by_median_not_the_same_median():
    recs = [record(arm="control", ttft_ms=100.0)] * 3 + [record(arm="canary", ttft_ms=160.0)] * 3
    rep = report_of(recs)
    verdict = rep.comparisons[0].verdicts[0]
    assert verdict.startswith("time to first token: control is faster than canary")
    assert "+60.0 ms" in verdict and "significance n/a" in verdict
    assert "time to first token: canary and control have the same median" not in render_text(rep)


def test_median_se_switches_to_a_normal_tail_above_1000_within_its_stated_error():
    xs = list(range(1001))
    c = max(1, round(1002 / 2 - math.sqrt(1001)))
    exact_tail = sum(math.comb(1001, i) for i in range(c)) / (1 << 1001)
    exact_se = (xs[1001 - c] - xs[c - 1]) / (2 * stats.norm.isf(exact_tail))
    assert median_se(xs) == pytest.approx(exact_se, rel=3e-4)       # the documented bound
    assert median_se(xs) != pytest.approx(exact_se, rel=1e-6)       # and it is an approximation
    n = 1000
    c = max(1, round((n + 1) / 2 - math.sqrt(n)))
    assert _binom_half_cdf(n, c - 1) == sum(math.comb(n, i) for i in range(c)) / (1 << n)
