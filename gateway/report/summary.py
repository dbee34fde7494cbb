"""Per-arm statistics and every arm against the control arm, with the
verdicts in words.  The report as data (dataclasses), no rendering."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from .dataset import ArmData, Dataset, rescale, utc_of_us
from .errors import ReportError
from .stats import (
    ALPHA,
    Sample,
    mann_whitney_u,
    median_diff_ci,
    newcombe_diff_interval,
    percentile,
    two_proportion_z_test,
    welch_test,
    wilson_interval,
)

DEFINITIONS = {
    "success": "outcome == 'ok'; every other outcome counts as an error",
    "error_rate_ci95": "Wilson score interval",
    "ttft": "requests with a non-null ttft_ms, any outcome",
    "latency": "latency_ms of ok requests only",
    "percentile": "linear interpolation between closest ranks (Hyndman-Fan type 7, numpy default)",
    "cost_per_request": "mean cost_usd over requests with a price (non-null cost_usd)",
    "cost_per_1m_completion_tokens": "total cost / completion tokens of priced requests * 1e6",
    "median_diff_ci95": "arm - control; Bonett-Price (2002) order-statistic standard errors, normal CI",
    "median_se": "exact binomial coverage up to n = 1000 per arm, its normal approximation above "
                 "(standard error within a relative 3e-4 of exact)",
    "shift_p_value": "two-sided Mann-Whitney U: exact when one arm has at most 8 values, the other at "
                     "most 1000 and no ties; else normal approximation, tie and continuity corrected",
    "error_p_value": "two-sided pooled two-proportion z-test (p from erfc, exact in the far tail); "
                     "difference CI: Newcombe hybrid score",
    "cost_p_value": "two-sided Welch t-test (unequal variances, t distribution) on per-request "
                    "cost of priced requests",
    "significance": "p < 0.05 (95 %), no multiple-comparison correction",
    "hedge_rate": "requests with hedged true (schema 2) / requests; hedge TTFT p95: "
                  "ttft_ms p95 (linear interpolation) of hedged and of the other requests; hedge extra cost: "
                  "sum of hedge_cost_usd (the losers' estimated input cost)",
}


def _fmt_ts(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return _fmt_us(round(epoch * 1e6))


def _fmt_us(us: int | None) -> str | None:
    if us is None:
        return None
    return utc_of_us(us).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class ArmStats:
    arm: str
    requests: int
    successes: int
    success_rate: float | None
    error_rate: float | None
    error_rate_ci95: tuple[float, float] | None
    outcomes: dict[str, int]
    ttft_n: int
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    ttft_p99_ms: float | None
    latency_n: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    latency_mean_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    priced_requests: int
    unpriced_requests: int
    cost_usd: float | None                   # None: the total exceeds a double
    cost_per_request_usd: float | None
    cost_per_1k_requests_usd: float | None
    cost_per_1m_completion_tokens_usd: float | None
    fallbacks: int
    fallback_share: float | None
    hedged: int
    hedge_rate: float | None
    ttft_p95_hedged_ms: float | None
    ttft_p95_unhedged_ms: float | None
    hedge_cost_usd: float | None
    ts_first: str | None
    ts_last: str | None


@dataclass
class ShiftTest:
    """Arm vs control for a duration metric (TTFT or latency)."""
    metric: str
    n_arm: int
    n_control: int
    median_arm_ms: float | None = None
    median_control_ms: float | None = None
    median_diff_ms: float | None = None      # arm - control
    median_diff_rel: float | None = None     # (arm - control) / control
    median_diff_ci95_ms: tuple[float, float] | None = None
    mann_whitney_u: float | None = None
    p_value: float | None = None
    prob_arm_faster: float | None = None     # P(arm < control) + P(tie)/2
    significant: bool | None = None
    faster: str | None = None                # arm name, by median (None: tie / n/a)


@dataclass
class PropTest:
    errors_arm: int
    n_arm: int
    errors_control: int
    n_control: int
    error_rate_arm: float | None = None
    error_rate_control: float | None = None
    diff: float | None = None                # arm - control
    diff_ci95: tuple[float, float] | None = None
    z: float | None = None
    p_value: float | None = None
    significant: bool | None = None
    more_reliable: str | None = None


@dataclass
class CostTest:
    n_arm: int
    n_control: int
    cost_per_request_arm_usd: float | None = None
    cost_per_request_control_usd: float | None = None
    ratio: float | None = None               # arm / control
    p_value: float | None = None
    significant: bool | None = None
    cheaper: str | None = None


@dataclass
class Comparison:
    arm: str
    control: str
    ttft: ShiftTest
    latency: ShiftTest
    errors: PropTest
    cost: CostTest
    verdicts: list[str]


@dataclass
class Report:
    meta: dict[str, Any]
    control: str | None
    arms: dict[str, ArmStats]
    comparisons: list[Comparison]
    warnings: list[str]
    definitions: dict[str, str] = field(default_factory=lambda: dict(DEFINITIONS))


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _arm_stats(a: ArmData) -> ArmStats:
    n = a.requests
    ok = a.successes
    errors = n - ok
    priced = a.priced
    cpr = rescale(a.cost_sum_scaled / priced, a.cost_exp) if priced else None
    per_1m = (rescale(a.cost_sum_scaled / a.priced_completion_tokens * 1e6, a.cost_exp)
              if a.priced_completion_tokens else None)
    ttft, lat = a.ttft, a.latency
    return ArmStats(
        arm=a.name,
        requests=n,
        successes=ok,
        success_rate=ok / n if n else None,
        error_rate=errors / n if n else None,
        error_rate_ci95=wilson_interval(errors, n),
        outcomes=dict(sorted(a.outcomes.items(), key=lambda kv: (kv[0] != "ok", -kv[1], kv[0]))),
        ttft_n=len(ttft),
        ttft_p50_ms=percentile(ttft, 50),
        ttft_p95_ms=percentile(ttft, 95),
        ttft_p99_ms=percentile(ttft, 99),
        latency_n=len(lat),
        latency_p50_ms=percentile(lat, 50),
        latency_p95_ms=percentile(lat, 95),
        latency_p99_ms=percentile(lat, 99),
        latency_mean_ms=a.latency_mean_ms(),
        prompt_tokens=a.prompt_tokens,
        completion_tokens=a.completion_tokens,
        priced_requests=priced,
        unpriced_requests=n - priced,
        cost_usd=_finite(a.cost_usd),
        cost_per_request_usd=cpr,
        cost_per_1k_requests_usd=_finite(cpr * 1000) if cpr is not None else None,
        cost_per_1m_completion_tokens_usd=_finite(per_1m) if per_1m is not None else None,
        fallbacks=a.fallbacks,
        fallback_share=a.fallbacks / n if n else None,
        hedged=a.hedged,
        hedge_rate=a.hedged / n if n else None,
        ttft_p95_hedged_ms=a.ttft_p95_hedged_ms,
        ttft_p95_unhedged_ms=a.ttft_p95_unhedged_ms,
        hedge_cost_usd=_finite(a.hedge_cost_usd),
        ts_first=_fmt_us(a.first_us),
        ts_last=_fmt_us(a.last_us),
    )


def _shift_test(metric: str, arm: str, control: str, xs: Sample, ys: Sample,
                min_n: int = 5) -> ShiftTest:
    st = ShiftTest(metric=metric, n_arm=len(xs), n_control=len(ys))
    if not xs or not ys:
        return st
    st.median_arm_ms = percentile(xs, 50)
    st.median_control_ms = percentile(ys, 50)
    st.median_diff_ms = st.median_arm_ms - st.median_control_ms  # type: ignore[operator]
    if st.median_control_ms:
        st.median_diff_rel = st.median_diff_ms / st.median_control_ms
    # The faster arm is named by its median before any test, so that arms too
    # small for a test still get the direction their medians show.
    if st.median_diff_ms < 0:
        st.faster = arm
    elif st.median_diff_ms > 0:
        st.faster = control
    if len(xs) < min_n or len(ys) < min_n:
        return st
    ci = median_diff_ci(xs, ys)
    if ci is not None:
        st.median_diff_ci95_ms = (ci[1], ci[2])
    u, p, prob = mann_whitney_u(xs, ys)
    st.mann_whitney_u, st.p_value, st.prob_arm_faster = u, p, prob
    st.significant = p < ALPHA
    if st.median_diff_ms == 0 and prob != 0.5:  # equal medians: the U statistic breaks the tie
        st.faster = arm if prob > 0.5 else control
    return st


def _prop_test(arm: str, control: str, a: ArmStats, c: ArmStats) -> PropTest:
    ea, ec = a.requests - a.successes, c.requests - c.successes
    pt = PropTest(errors_arm=ea, n_arm=a.requests, errors_control=ec, n_control=c.requests)
    if not a.requests or not c.requests:
        return pt
    pt.error_rate_arm, pt.error_rate_control = ea / a.requests, ec / c.requests
    pt.diff = pt.error_rate_arm - pt.error_rate_control
    pt.diff_ci95 = newcombe_diff_interval(ea, a.requests, ec, c.requests)
    pt.z, pt.p_value = two_proportion_z_test(ea, a.requests, ec, c.requests)
    pt.significant = pt.p_value < ALPHA
    if pt.diff < 0:
        pt.more_reliable = arm
    elif pt.diff > 0:
        pt.more_reliable = control
    return pt


def _cost_test(arm: str, control: str, xa: ArmData, xc: ArmData) -> CostTest:
    ct = CostTest(n_arm=xa.priced, n_control=xc.priced)
    if not xa.priced or not xc.priced:
        return ct
    # Both arms' costs carry the same power-of-two scale (dataset.py), so the
    # comparison runs on the scaled moments; only the display is scaled back.
    ma, mc = xa.cost_sum_scaled / xa.priced, xc.cost_sum_scaled / xc.priced
    ct.cost_per_request_arm_usd = rescale(ma, xa.cost_exp)
    ct.cost_per_request_control_usd = rescale(mc, xc.cost_exp)
    if mc > 0:
        ct.ratio = ma / mc
    if ma < mc:
        ct.cheaper = arm
    elif ma > mc:
        ct.cheaper = control
    ct.p_value = welch_test(ma, xa.cost_var_scaled, xa.priced, mc, xc.cost_var_scaled, xc.priced)
    if ct.p_value is not None:
        ct.significant = ct.p_value < ALPHA
    return ct


def _p_str(p: float | None) -> str:
    if p is None:
        return "p n/a"
    if p < 0.0001:
        return "p<0.0001"
    return f"p={p:.4f}" if p < 0.01 else f"p={p:.3f}"


def _sig_str(sig: bool | None, p: float | None) -> str:
    if sig is None:
        return "significance n/a (too few samples)"
    return (f"significant at 95% ({_p_str(p)})" if sig
            else f"NOT significant at 95% ({_p_str(p)})")


def _shift_verdict(st: ShiftTest, arm: str, control: str, what: str) -> str:
    if st.median_diff_ms is None:
        return f"{what}: no samples in {arm if not st.n_arm else control}, no comparison"
    rel = f" ({st.median_diff_rel:+.1%})" if st.median_diff_rel is not None else ""
    if st.faster is None:
        head = f"{what}: {arm} and {control} have the same median"
    else:
        slower = control if st.faster == arm else arm
        head = (f"{what}: {st.faster} is faster than {slower} "
                f"(median {arm} vs {control}: {st.median_diff_ms:+.1f} ms{rel})")
    return f"{head}; {_sig_str(st.significant, st.p_value)}"


def _verdicts(cmp_: Comparison) -> list[str]:
    arm, control = cmp_.arm, cmp_.control
    out = [
        _shift_verdict(cmp_.ttft, arm, control, "time to first token"),
        _shift_verdict(cmp_.latency, arm, control, "latency"),
    ]
    e = cmp_.errors
    if e.diff is None:
        out.append("reliability: no requests, no comparison")
    else:
        if e.more_reliable is None:
            head = f"reliability: {arm} and {control} have the same error rate ({e.error_rate_arm:.2%})"
        else:
            other = control if e.more_reliable == arm else arm
            head = (f"reliability: {e.more_reliable} is more reliable than {other} "
                    f"(error rate {e.error_rate_arm:.2%} vs {e.error_rate_control:.2%}, "
                    f"{e.diff * 100:+.2f} pt)")
        out.append(f"{head}; {_sig_str(e.significant, e.p_value)}")
    c = cmp_.cost
    if c.cost_per_request_arm_usd is None:
        missing = arm if not c.n_arm else control
        out.append(f"cost: no priced requests in {missing}, no comparison")
    else:
        if c.cheaper is None:
            head = f"cost: {arm} and {control} cost the same per request"
        else:
            other = control if c.cheaper == arm else arm
            ratio = f"{c.ratio:.2f}x" if c.ratio is not None else "n/a"
            head = (f"cost: {c.cheaper} is cheaper than {other} "
                    f"(cost per request {arm}/{control} = {ratio})")
        out.append(f"{head}; {_sig_str(c.significant, c.p_value)}")
    return out


def pick_control(arms: dict[str, Any], control: str | None = None) -> str | None:
    """``control`` if given (must exist), else the arm named "control", else
    the arm with most requests (ties: by name)."""
    if control is not None:
        if control not in arms:
            known = ", ".join(sorted(arms)) or "none"
            raise ReportError(f"--control: no arm named {control!r} (arms: {known})")
        return control
    if not arms:
        return None
    if "control" in arms:
        return "control"
    return min(arms, key=lambda k: (-arms[k].requests, k))


def summarize(ds: Dataset, control: str | None = None) -> Report:
    """Per-arm statistics and every arm vs the control arm."""
    ctrl = pick_control(ds.arms, control)
    order = sorted(ds.arms, key=lambda k: (k != ctrl, -ds.arms[k].requests, k))
    arms = {k: _arm_stats(ds.arms[k]) for k in order}
    warnings: list[str] = []
    comparisons = []
    for k in order:
        if ctrl is None or k == ctrl:  # no arms at all, or the control itself
            continue
        cmp_ = Comparison(
            arm=k, control=ctrl,
            ttft=_shift_test("ttft_ms", k, ctrl, ds.arms[k].ttft, ds.arms[ctrl].ttft),
            latency=_shift_test("latency_ms", k, ctrl, ds.arms[k].latency, ds.arms[ctrl].latency),
            errors=_prop_test(k, ctrl, arms[k], arms[ctrl]),
            cost=_cost_test(k, ctrl, ds.arms[k], ds.arms[ctrl]),
            verdicts=[],
        )
        cmp_.verdicts = _verdicts(cmp_)
        comparisons.append(cmp_)
    for k, s in arms.items():
        if s.requests < 30:
            warnings.append(f"arm {k!r}: only {s.requests} requests; tests are unreliable")
        errors = s.requests - s.successes
        if 0 < s.requests and (errors < 5 or s.successes < 5):
            warnings.append(f"arm {k!r}: {errors} errors / {s.successes} successes; "
                            "the normal approximation of the error-rate test is rough")
        if s.unpriced_requests:
            warnings.append(f"arm {k!r}: {s.unpriced_requests} requests without a price "
                            "(cost_usd null); cost figures cover priced requests only")
        if s.priced_requests and s.cost_usd is None:
            warnings.append(f"arm {k!r}: the total cost exceeds the largest double (about 1.8e308 USD); "
                            "total and cost per 1M tokens are not shown, cost per request is")
    if len(arms) < 2 and arms:
        warnings.append("only one arm: nothing to compare")
    if ds.malformed:
        warnings.append(f"{ds.malformed} malformed line(s) ignored")
    if ds.unassigned:
        warnings.append(f"{ds.unassigned} request(s) without an arm (routing failed) not attributed")
    firsts = [s.ts_first for s in arms.values() if s.ts_first]
    lasts = [s.ts_last for s in arms.values() if s.ts_last]
    meta = {
        "generated_at": _fmt_ts(time.time()),
        "sources": list(ds.sources),
        "since": _fmt_ts(ds.since),
        "route": ds.route,
        "lines": ds.lines,
        "requests": ds.requests,
        "malformed": ds.malformed,
        "malformed_examples": list(ds.malformed_examples),
        "skipped": ds.skipped,
        "filtered": ds.filtered,
        "unassigned": ds.unassigned,
        "ts_first": min(firsts) if firsts else None,
        "ts_last": max(lasts) if lasts else None,
    }
    return Report(meta=meta, control=ctrl, arms=arms, comparisons=comparisons, warnings=warnings)
