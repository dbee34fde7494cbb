"""The report as text (a table per arm, then each comparison) or as JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

import orjson

from .summary import Report, _p_str


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def _usd(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.2f}" if abs(x) >= 1 else f"${x:.4f}"


def render_text(report: Report) -> str:
    m = report.meta
    out: list[str] = []
    w = out.append
    w("gateway report")
    w(f"  inputs:   {', '.join(m['sources'])}")
    w(f"  period:   {m['ts_first'] or '-'} .. {m['ts_last'] or '-'}")
    w(f"  filters:  route={m['route'] or 'all'}  since={m['since'] or '-'}")
    w(f"  lines:    {m['lines']:,} read, {m['requests']:,} requests counted, "
      f"{m['malformed']:,} malformed, {m['skipped']:,} skipped (other events/schemas), "
      f"{m['filtered']:,} filtered out, {m['unassigned']:,} without arm")
    for ex in m["malformed_examples"]:
        w(f"            malformed: {ex}")
    w(f"  control:  {report.control or '-'}")
    w("")
    if not report.arms:
        w("no request lines matched")
        return "\n".join(out) + "\n"
    names = list(report.arms)
    s = report.arms
    rows: list[tuple[str, list[str]]] = [
        ("requests", [f"{s[k].requests:,}" for k in names]),
        ("successes (ok)", [f"{s[k].successes:,}" for k in names]),
        ("success rate", [_pct(s[k].success_rate) for k in names]),
        ("error rate", [_pct(s[k].error_rate) for k in names]),
        ("  95% CI (Wilson)", [f"{_pct(wilson[0])} .. {_pct(wilson[1])}" if (wilson := s[k].error_rate_ci95) else "-"
                               for k in names]),
        ("TTFT p50 ms", [_ms(s[k].ttft_p50_ms) for k in names]),
        ("TTFT p95 ms", [_ms(s[k].ttft_p95_ms) for k in names]),
        ("TTFT p99 ms", [_ms(s[k].ttft_p99_ms) for k in names]),
        ("  TTFT samples", [f"{s[k].ttft_n:,}" for k in names]),
        ("latency p50 ms (ok)", [_ms(s[k].latency_p50_ms) for k in names]),
        ("latency p95 ms (ok)", [_ms(s[k].latency_p95_ms) for k in names]),
        ("latency p99 ms (ok)", [_ms(s[k].latency_p99_ms) for k in names]),
        ("latency mean ms (ok)", [_ms(s[k].latency_mean_ms) for k in names]),
        ("prompt tokens", [f"{s[k].prompt_tokens:,}" for k in names]),
        ("completion tokens", [f"{s[k].completion_tokens:,}" for k in names]),
        ("cost total", [_usd(s[k].cost_usd) for k in names]),
        ("cost / 1k requests", [_usd(s[k].cost_per_1k_requests_usd) for k in names]),
        ("cost / 1M compl. tokens", [_usd(s[k].cost_per_1m_completion_tokens_usd) for k in names]),
        ("unpriced requests", [f"{s[k].unpriced_requests:,}" for k in names]),
        ("fallback share", [_pct(s[k].fallback_share) for k in names]),
    ]
    if any(s[k].hedged for k in names):  # schema 2, a route with `hedge`
        rows += [
            ("hedge rate", [_pct(s[k].hedge_rate) for k in names]),
            ("  TTFT p95 ms, hedged", [_ms(s[k].ttft_p95_hedged_ms) for k in names]),
            ("  TTFT p95 ms, not hedged", [_ms(s[k].ttft_p95_unhedged_ms) for k in names]),
            ("  hedge extra cost", [_usd(s[k].hedge_cost_usd) for k in names]),
        ]
    outcomes = sorted({o for k in names for o in s[k].outcomes},
                      key=lambda o: (o != "ok", o))
    for o in outcomes:
        rows.append((f"  outcome {o}", [f"{s[k].outcomes.get(o, 0):,}" for k in names]))
    lw = max(len(r[0]) for r in rows) + 2
    cw = [max(len(k) + (10 if k == report.control else 0), *(len(r[1][i]) for r in rows)) + 2
          for i, k in enumerate(names)]
    w("per arm".ljust(lw) + "".join(
        (f"{k} (control)" if k == report.control else k).rjust(cw[i]) for i, k in enumerate(names)))
    for label, vals in rows:
        w(label.ljust(lw) + "".join(v.rjust(cw[i]) for i, v in enumerate(vals)))
    for c in report.comparisons:
        w("")
        w(f"{c.arm} vs {c.control} (control)")
        for st, label in ((c.ttft, "TTFT"), (c.latency, "latency")):
            if st.median_diff_ms is None:
                w(f"  {label:8} median diff: n/a")
                continue
            ci = (f" [95% CI {st.median_diff_ci95_ms[0]:+.1f} .. {st.median_diff_ci95_ms[1]:+.1f}]"
                  if st.median_diff_ci95_ms else "")
            rel = f" ({st.median_diff_rel:+.1%})" if st.median_diff_rel is not None else ""
            prob = (f", P({c.arm} faster)={st.prob_arm_faster:.3f}"
                    if st.prob_arm_faster is not None else "")
            w(f"  {label:8} median diff {st.median_diff_ms:+.1f} ms{rel}{ci}; "
              f"Mann-Whitney {_p_str(st.p_value)}{prob}")
        e = c.errors
        if e.diff is not None:
            err_ci = f" [95% CI {e.diff_ci95[0] * 100:+.2f} .. {e.diff_ci95[1] * 100:+.2f}]" if e.diff_ci95 else ""
            w(f"  errors   {e.error_rate_arm:.2%} vs {e.error_rate_control:.2%}, "
              f"diff {e.diff * 100:+.2f} pt{err_ci}; z-test {_p_str(e.p_value)}")
        k = c.cost
        if k.cost_per_request_arm_usd is not None:
            ratio = f"{k.ratio:.3f}x" if k.ratio is not None else "n/a"
            w(f"  cost     per request {k.cost_per_request_arm_usd:.6f} vs "
              f"{k.cost_per_request_control_usd:.6f} USD, ratio {ratio}; Welch {_p_str(k.p_value)}")
        w("  verdict:")
        for v in c.verdicts:
            w(f"    - {v}")
    if report.warnings:
        w("")
        w("warnings:")
        for x in report.warnings:
            w(f"  - {x}")
    w("")
    w("method: percentiles type-7 (linear interpolation); median CI Bonett-Price; "
      "Mann-Whitney U (exact for small arms, else normal approx., tie-corrected); "
      "errors: two-proportion z-test; cost: Welch t-test; latency over ok requests only; "
      "95% two-sided, no multiple-comparison correction.")
    return "\n".join(out) + "\n"


_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


def _jsonable(obj: Any, wide: list[bool]) -> Any:
    """Non-finite floats to null; notes in ``wide`` an integer beyond 64 bits."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, int) and not isinstance(obj, bool) and not _INT64_MIN <= obj <= _UINT64_MAX:
        wide[0] = True
    if isinstance(obj, dict):
        return {k: _jsonable(v, wide) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, wide) for v in obj]
    return obj


def render_json(report: Report) -> bytes:
    """The report as indented JSON (UTF-8 bytes, trailing newline).  Token
    totals can pass 2^64, which orjson cannot write; such a report goes
    through the standard library, which writes every integer exactly."""
    wide = [False]
    doc = {"report": "gateway-ab", "version": 1, **_jsonable(asdict(report), wide)}
    if wide[0]:
        return json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
