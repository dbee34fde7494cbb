"""Tests for gateway/report/ -- the A/B report over request logs."""

from __future__ import annotations

import gzip
import io
import math
import random
import sys
from datetime import UTC, datetime, timedelta
from statistics import NormalDist, quantiles

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import report
from gateway.report import (
    load,
    main,
    mann_whitney_u,
    median_diff_ci,
    parse_since,
    percentile,
    render_json,
    render_text,
    summarize,
    two_proportion_z_test,
    wilson_interval,
    write_html,
)

UTC = UTC
T0 = datetime(2026, 11, 26, 4, 0, tzinfo=UTC)


# ---------------------------------------------------------------------------
# synthetic schema-v1 logs
# ---------------------------------------------------------------------------


def _ts(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record(**over) -> dict:
    """One complete schema-v1 request line (the docs example), with overrides."""
    rec = {
        "schema": 1, "event": "request", "ts": _ts(T0), "request_id": "5f0c",
        "endpoint": "chat_completions", "route": "chat", "arm": "control",
        "provider": "mock-fast", "upstream_model": "mock-fast-1",
        "user_key_hash": "9a1b2c3d4e5f6071", "user_key_source": "user", "stream": True,
        "status": 200, "outcome": "ok", "attempts": 1, "fallback_used": False,
        "upstream_connect_ms": 2.1, "ttfb_ms": 2.3, "ttft_ms": 52.8, "latency_ms": 470.2,
        "max_gap_ms": 21.0, "p95_gap_ms": 20.6, "gateway_overhead_ms": 1.9, "events_out": 22,
        "bytes_out": 4710, "prompt_tokens": 12, "completion_tokens": 20,
        "usage_source": "upstream", "cost_usd": 0.000126, "client_disconnected": False,
        "error_code": None, "error_message": None,
    }
    if "ts" in over and isinstance(over["ts"], datetime):
        over["ts"] = _ts(over["ts"])
    rec.update(over)
    return rec


def synth(rng: random.Random, arm: str, n: int, *, ttft_median: float = 400.0,
          sigma: float = 0.5, latency: tuple[float, float] = (1000.0, 3000.0),
          error_rate: float = 0.0, errors: int | None = None, cost: float = 0.0001,
          start: datetime = T0, step_s: float = 1.0, route: str = "chat") -> list[dict]:
    """n request records for one arm: lognormal TTFT (given median, sigma),
    uniform latency, errors either random (error_rate) or exactly ``errors``
    of them, constant cost per request."""
    failing = set(rng.sample(range(n), errors)) if errors is not None else None
    out = []
    for i in range(n):
        bad = (i in failing) if failing is not None else rng.random() < error_rate
        ttft = round(rng.lognormvariate(math.log(ttft_median), sigma), 1)
        out.append(record(
            ts=start + timedelta(seconds=i * step_s), arm=arm, route=route,
            outcome="upstream_error" if bad else "ok",
            error_code="upstream_error" if bad else None,
            ttft_ms=None if bad else ttft,
            latency_ms=round(rng.uniform(*latency), 1),
            cost_usd=cost,
        ))
    return out


def as_bytes(records: list) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def write_log(path, records: list, gz: bool = False) -> str:
    data = as_bytes(records)
    path.write_bytes(gzip.compress(data) if gz else data)
    return str(path)


def report_of(records: list, **kw):
    ds = load([io.BytesIO(as_bytes(records))])
    return summarize(ds, **kw)


def stdin_with(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


# ---------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------


def test_percentile_of_small_sample_matches_hand_computed_values():
    xs = [15, 20, 35, 40, 50]
    # type 7: h = (n-1) p/100 = 4p/100
    assert percentile(xs, 0) == 15
    assert percentile(xs, 25) == 20                    # h = 1
    assert percentile(xs, 40) == pytest.approx(29.0)   # h = 1.6: 20 + 0.6 * 15
    assert percentile(xs, 50) == 35                    # h = 2
    assert percentile(xs, 95) == pytest.approx(48.0)   # h = 3.8: 40 + 0.8 * 10
    assert percentile(xs, 99) == pytest.approx(49.6)   # h = 3.96
    assert percentile(xs, 100) == 50
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert percentile([7.5], 99) == 7.5
    assert percentile([], 50) is None


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50),
       st.floats(0, 100), st.floats(0, 100))
def test_percentile_is_monotone_and_within_sample_range(xs, p, q):
    xs = sorted(xs)
    lo, hi = sorted((p, q))
    assert xs[0] <= percentile(xs, lo) <= percentile(xs, hi) + 1e-9 <= xs[-1] + 1e-9


def test_wilson_interval_matches_reference_values():
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = wilson_interval(0, 10)
    assert (lo, hi) == (0.0, pytest.approx(0.2775, abs=1e-4))
    lo, hi = wilson_interval(10, 10)
    assert (lo, hi) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    assert wilson_interval(0, 0) is None


def test_mann_whitney_of_small_samples_without_ties_is_exact():
    u, p, prob = mann_whitney_u([1, 2, 3], [4, 5, 6])
    assert u == 0                      # no a exceeds any b
    # exact: U = 0 is 1 of the C(6,3) = 20 equally likely splits; two-sided: 2/20
    assert p == pytest.approx(0.1, rel=1e-12)
    assert prob == 1.0


def test_mann_whitney_with_ties_uses_midranks_and_tie_correction():
    # combined 1,2,2,2,3,4 -> ranks 1,3,3,3,5,6; R_a = 1+3+3 = 7, U_a = 7 - 6 = 1
    u, p, _ = mann_whitney_u([1, 2, 2], [2, 3, 4])
    assert u == 1
    var = 9 / 12 * (7 - (3 ** 3 - 3) / (6 * 5))
    assert p == pytest.approx(2 * NormalDist().cdf(-(3.5 - 0.5) / math.sqrt(var)))


@given(st.lists(st.integers(0, 20), min_size=1, max_size=30),
       st.lists(st.integers(0, 20), min_size=1, max_size=30))
def test_mann_whitney_u_of_both_directions_sums_to_n1_n2(a, b):
    ua, pa, _ = mann_whitney_u(a, b)
    ub, pb, _ = mann_whitney_u(b, a)
    assert ua + ub == pytest.approx(len(a) * len(b))
    assert pa == pytest.approx(pb)


def test_two_proportion_z_test_matches_hand_computation():
    z, p = two_proportion_z_test(50, 1000, 30, 1000)
    pooled = 80 / 2000
    z_hand = 0.02 / math.sqrt(pooled * (1 - pooled) * 2 / 1000)
    assert z == pytest.approx(z_hand)
    assert p == pytest.approx(2 * NormalDist().cdf(-z_hand))


@settings(deadline=None, max_examples=1)
@given(st.just(None))
def test_median_diff_ci_covers_true_difference_about_95_percent(_):
    rng = random.Random(7)
    true_diff = 300 - 400
    hits = 0
    reps = 300
    for _ in range(reps):
        a = sorted(rng.lognormvariate(math.log(300), 0.6) for _ in range(150))
        b = sorted(rng.lognormvariate(math.log(400), 0.6) for _ in range(150))
        _, lo, hi = median_diff_ci(a, b)
        hits += lo <= true_diff <= hi
    assert 0.90 <= hits / reps <= 0.99


# ---------------------------------------------------------------------------
# per-arm figures
# ---------------------------------------------------------------------------


def test_generated_log_gives_known_percentiles():
    rng = random.Random(11)
    rep = report_of(synth(rng, "control", 20000, ttft_median=400, sigma=0.5,
                          latency=(1000, 3000)))
    s = rep.arms["control"]
    z95, z99 = NormalDist().inv_cdf(0.95), NormalDist().inv_cdf(0.99)
    assert s.ttft_p50_ms == pytest.approx(400, rel=0.03)
    assert s.ttft_p95_ms == pytest.approx(400 * math.exp(0.5 * z95), rel=0.04)   # 910.6
    assert s.ttft_p99_ms == pytest.approx(400 * math.exp(0.5 * z99), rel=0.06)   # 1280.1
    assert s.latency_p50_ms == pytest.approx(2000, rel=0.02)
    assert s.latency_p95_ms == pytest.approx(2900, rel=0.02)
    assert s.latency_p99_ms == pytest.approx(2980, rel=0.02)
    assert s.latency_mean_ms == pytest.approx(2000, rel=0.02)


def test_cost_totals_and_cost_per_1k_requests_are_exact_to_the_cent():
    recs = ([record(arm="control", cost_usd=0.0123, completion_tokens=100)] * 1000
            + [record(arm="canary", cost_usd=0.00456, completion_tokens=50)] * 2000)
    rep = report_of(recs)
    c, k = rep.arms["control"], rep.arms["canary"]
    assert round(c.cost_usd, 2) == 12.30 and c.cost_usd == pytest.approx(12.30, abs=1e-9)
    assert round(k.cost_usd, 2) == 9.12 and k.cost_usd == pytest.approx(9.12, abs=1e-9)
    assert round(c.cost_per_1k_requests_usd, 2) == 12.30
    assert round(k.cost_per_1k_requests_usd, 2) == 4.56
    assert c.cost_per_1m_completion_tokens_usd == pytest.approx(123.0)   # 12.30 / 100k tokens
    assert rep.comparisons[0].cost.ratio == pytest.approx(0.00456 / 0.0123)
    assert "$12.30" in render_text(rep)


def test_cost_ignores_unpriced_requests_and_counts_them():
    recs = [record(cost_usd=0.01)] * 10 + [record(cost_usd=None)] * 5
    s = report_of(recs).arms["control"]
    assert s.priced_requests == 10 and s.unpriced_requests == 5
    assert s.cost_usd == pytest.approx(0.10)
    assert s.cost_per_1k_requests_usd == pytest.approx(10.0)


def test_outcome_breakdown_success_rate_and_fallback_share():
    recs = ([record()] * 6 + [record(outcome="timeout_idle")] * 3
            + [record(outcome="client_error", fallback_used=True)])
    s = report_of(recs).arms["control"]
    assert s.requests == 10 and s.successes == 6
    assert s.success_rate == pytest.approx(0.6) and s.error_rate == pytest.approx(0.4)
    assert s.outcomes == {"ok": 6, "timeout_idle": 3, "client_error": 1}
    assert s.fallback_share == pytest.approx(0.1)
    lo, hi = s.error_rate_ci95
    assert lo < 0.4 < hi


def test_latency_counts_ok_requests_only_and_ttft_requests_with_ttft():
    recs = [record(latency_ms=100.0, ttft_ms=10.0),
            record(latency_ms=30000.0, ttft_ms=None, outcome="timeout_first_token")]
    s = report_of(recs).arms["control"]
    assert s.latency_n == 1 and s.latency_p99_ms == 100.0
    assert s.ttft_n == 1


def test_tokens_are_summed_per_arm():
    recs = [record(prompt_tokens=10, completion_tokens=5),
            record(prompt_tokens=None, completion_tokens=7)]
    s = report_of(recs).arms["control"]
    assert (s.prompt_tokens, s.completion_tokens) == (10, 12)


# ---------------------------------------------------------------------------
# arm vs control
# ---------------------------------------------------------------------------


def test_planted_30_percent_ttft_difference_is_significant():
    rng = random.Random(42)
    recs = (synth(rng, "control", 3000, ttft_median=400, sigma=0.6)
            + synth(rng, "canary", 3000, ttft_median=280, sigma=0.6))
    cmp_ = report_of(recs).comparisons[0]
    t = cmp_.ttft
    assert (cmp_.arm, cmp_.control) == ("canary", "control")
    assert t.significant is True and t.p_value < 1e-6
    assert t.faster == "canary"
    assert t.median_diff_rel == pytest.approx(-0.30, abs=0.05)
    lo, hi = t.median_diff_ci95_ms
    assert lo < -120 < hi < 0
    assert any("canary is faster" in v and "time to first token" in v and
               "significant at 95%" in v and "NOT" not in v for v in cmp_.verdicts)


def test_aa_split_is_not_significant():
    rng = random.Random(3)
    recs = (synth(rng, "control", 3000, ttft_median=400, sigma=0.6, error_rate=0.02)
            + synth(rng, "b", 3000, ttft_median=400, sigma=0.6, error_rate=0.02))
    cmp_ = report_of(recs).comparisons[0]
    assert cmp_.ttft.significant is False
    assert cmp_.latency.significant is False
    assert cmp_.errors.significant is False
    lo, hi = cmp_.ttft.median_diff_ci95_ms
    assert lo < 0 < hi
    assert sum("NOT significant at 95%" in v for v in cmp_.verdicts) >= 3


def test_planted_error_rate_5_vs_1_percent_is_significant():
    rng = random.Random(5)
    recs = (synth(rng, "control", 3000, errors=150) + synth(rng, "canary", 3000, errors=30))
    e = report_of(recs).comparisons[0].errors
    assert (e.error_rate_control, e.error_rate_arm) == (0.05, 0.01)
    assert e.significant is True and e.p_value < 1e-6
    assert e.more_reliable == "canary"
    assert e.diff_ci95[1] < 0


def test_equal_error_rates_are_not_significant():
    rng = random.Random(6)
    recs = (synth(rng, "control", 3000, errors=60) + synth(rng, "canary", 3000, errors=60))
    e = report_of(recs).comparisons[0].errors
    assert e.significant is False and e.p_value == pytest.approx(1.0)
    assert e.more_reliable is None


def test_cheaper_arm_is_named_with_significance():
    rng = random.Random(8)
    recs = []
    for arm, price in (("control", 0.002), ("canary", 0.001)):
        for r in synth(rng, arm, 500):
            r["cost_usd"] = round(price * rng.uniform(0.5, 1.5), 6)
            recs.append(r)
    cmp_ = report_of(recs).comparisons[0]
    assert cmp_.cost.cheaper == "canary" and cmp_.cost.significant is True
    assert cmp_.cost.ratio == pytest.approx(0.5, abs=0.05)
    assert any(v.startswith("cost: canary is cheaper") for v in cmp_.verdicts)


def test_control_defaults_to_arm_named_control():
    recs = [record(arm="big")] * 5 + [record(arm="control")] * 2
    assert report_of(recs).control == "control"


def test_control_defaults_to_arm_with_most_requests():
    recs = [record(arm="big")] * 5 + [record(arm="small")] * 2
    rep = report_of(recs)
    assert rep.control == "big" and rep.comparisons[0].arm == "small"


def test_control_option_selects_arm(tmp_path, capsys):
    path = write_log(tmp_path / "r.log", [record(arm="a")] * 5 + [record(arm="b")] * 3)
    assert main([path, "--control", "b", "--format", "json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["control"] == "b"
    assert [(c["arm"], c["control"]) for c in doc["comparisons"]] == [("a", "b")]


def test_unknown_control_arm_exits_2(tmp_path, capsys):
    path = write_log(tmp_path / "r.log", [record(arm="a")])
    assert main([path, "--control", "nope"]) == 2
    assert "no arm named 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------


def test_malformed_lines_are_counted_not_fatal(tmp_path, capsys):
    good = as_bytes([record(), record(arm="canary")])
    missing = record()
    del missing["outcome"]
    junk = b"\n".join([
        b"garbage here",
        b'{"schema":1,"event":"request","ts":"2026-11-26T04:3',   # truncated
        b"[1, 2, 3]",                                                # JSON array
        orjson.dumps(missing),                                       # missing field
        orjson.dumps(record(ttft_ms="fast")),                        # wrong type
        orjson.dumps(record(ts="yesterday")),                        # bad timestamp
        b"",                                                         # blank: ignored
        orjson.dumps({"event": "startup", "level": "info"}),         # other event: skipped
        orjson.dumps(record(schema=0)),                              # other schema: skipped
    ]) + b"\n"
    path = tmp_path / "r.log"
    path.write_bytes(good + junk)
    ds = load([str(path)])
    assert ds.malformed == 6 and ds.skipped == 2 and ds.requests == 2
    assert any("outcome" in ex for ex in ds.malformed_examples)
    assert main([str(path)]) == 0
    assert "6 malformed" in capsys.readouterr().out


def test_gzip_input_is_detected_by_magic_bytes(tmp_path):
    path = write_log(tmp_path / "requests.log", [record()] * 3, gz=True)  # no .gz suffix
    ds = load([path])
    assert ds.requests == 3 and ds.malformed == 0


def test_truncated_gzip_keeps_lines_read_and_counts_error(tmp_path):
    data = gzip.compress(as_bytes([record()] * 2000))
    path = tmp_path / "cut.log.gz"
    path.write_bytes(data[: len(data) // 2])
    ds = load([str(path)])
    assert ds.malformed >= 1
    assert 0 < ds.requests < 2000


def test_several_files_are_combined(tmp_path):
    a = write_log(tmp_path / "a.log", [record(arm="control")] * 2)
    b = write_log(tmp_path / "b.log.gz", [record(arm="canary")] * 3, gz=True)
    ds = load([a, b])
    assert {k: v.requests for k, v in ds.arms.items()} == {"control": 2, "canary": 3}


def test_main_reads_a_log_file(tmp_path, capsys):
    path = write_log(tmp_path / "r.log", [record(arm="control")] * 3 + [record(arm="canary")] * 2)
    assert main([path]) == 0
    out = capsys.readouterr().out
    assert "control (control)" in out and "canary vs control" in out


def test_stdin_is_read_when_no_file_is_given(monkeypatch, capsys):
    stdin_with(monkeypatch, as_bytes([record()] * 4))
    assert main(["--format", "json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["arms"]["control"]["requests"] == 4


def test_dash_reads_gzip_from_stdin(monkeypatch, capsys):
    stdin_with(monkeypatch, gzip.compress(as_bytes([record()] * 4)))
    assert main(["-", "--format", "json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["arms"]["control"]["requests"] == 4


def test_missing_file_exits_1_with_message(tmp_path, capsys):
    assert main([str(tmp_path / "nope.log")]) == 1
    assert "cannot open" in capsys.readouterr().err


def test_no_request_lines_exits_1(tmp_path, capsys):
    path = tmp_path / "r.log"
    path.write_bytes(b'{"event":"startup"}\n')
    assert main([str(path)]) == 1
    assert "no request lines matched" in capsys.readouterr().err


def test_requests_without_arm_are_counted_as_unassigned():
    ds = load([io.BytesIO(as_bytes([record(), record(arm=None, outcome="client_error")]))])
    assert ds.unassigned == 1 and ds.requests == 1


def test_since_rfc3339_filters_on_ts(tmp_path, capsys):
    recs = [record(ts=T0 + timedelta(minutes=m)) for m in range(60)]   # 04:00 .. 04:59
    path = write_log(tmp_path / "r.log", recs)
    assert main([path, "--since", "2026-11-26T04:30:00Z", "--format", "json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["arms"]["control"]["requests"] == 30
    assert doc["meta"]["filtered"] == 30


def test_since_relative_duration_is_relative_to_now(tmp_path, capsys):
    now = datetime.now(UTC)
    recs = [record(ts=now - timedelta(hours=3))] * 2 + [record(ts=now - timedelta(hours=1))] * 5
    path = write_log(tmp_path / "r.log", recs)
    assert main([path, "--since", "2h", "--format", "json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["arms"]["control"]["requests"] == 5


def test_parse_since_accepts_durations_and_rfc3339():
    now = 1_800_000_000.0
    assert parse_since("30m", now=now) == now - 1800
    assert parse_since("2h", now=now) == now - 7200
    assert parse_since("7d", now=now) == now - 7 * 86400
    assert parse_since("2026-11-26T04:00:00Z") == T0.timestamp()
    assert parse_since("2026-11-26T05:00:00+01:00") == T0.timestamp()


def test_bad_since_exits_2(tmp_path, capsys):
    path = write_log(tmp_path / "r.log", [record()])
    assert main([path, "--since", "last tuesday"]) == 2
    assert "--since" in capsys.readouterr().err


def test_route_filters_requests(tmp_path, capsys):
    recs = [record(route="chat")] * 3 + [record(route="embed")] * 2
    path = write_log(tmp_path / "r.log", recs)
    assert main([path, "--route", "embed", "--format", "json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["arms"]["control"]["requests"] == 2 and doc["meta"]["route"] == "embed"


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------

PER_ARM_FIELDS = {
    "requests", "successes", "success_rate", "error_rate", "error_rate_ci95",
    "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "latency_p50_ms", "latency_p95_ms",
    "latency_p99_ms", "latency_mean_ms", "prompt_tokens", "completion_tokens", "cost_usd",
    "cost_per_1k_requests_usd", "cost_per_1m_completion_tokens_usd", "outcomes",
    "fallback_share",
}


def test_format_json_parses_and_has_per_arm_fields(tmp_path, capsys):
    rng = random.Random(9)
    path = write_log(tmp_path / "r.log", synth(rng, "control", 200) + synth(rng, "canary", 200))
    assert main([path, "--format", "json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    for arm in ("control", "canary"):
        assert PER_ARM_FIELDS <= doc["arms"][arm].keys()
    cmp_ = doc["comparisons"][0]
    for key in ("ttft", "latency", "errors", "cost"):
        assert "p_value" in cmp_[key] and "significant" in cmp_[key]
    assert "median_diff_ci95_ms" in cmp_["ttft"]


def test_render_json_is_valid_for_an_empty_dataset():
    doc = orjson.loads(render_json(summarize(load([io.BytesIO(b"")]))))
    assert doc["arms"] == {} and doc["comparisons"] == []


def test_text_output_names_faster_more_reliable_and_cheaper_arm():
    rng = random.Random(12)
    recs = (synth(rng, "control", 2000, ttft_median=400, latency=(2000, 4000), errors=100,
                  cost=0.002)
            + synth(rng, "canary", 2000, ttft_median=300, latency=(1000, 3000), errors=20,
                    cost=0.001))
    text = render_text(report_of(recs))
    assert "time to first token: canary is faster than control" in text
    assert "latency: canary is faster than control" in text
    assert "reliability: canary is more reliable than control" in text
    assert "cost: canary is cheaper than control" in text


def test_html_is_self_contained_with_charts(tmp_path, capsys):
    import matplotlib  # noqa: F401  -- required, not skipped: the test extra installs it
    rng = random.Random(13)
    recs = (synth(rng, "control", 300, step_s=30) + synth(rng, "canary", 300, step_s=30,
                                                        ttft_median=300))
    path = write_log(tmp_path / "r.log", recs)
    out = tmp_path / "report.html"
    assert main([path, "--html", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert "<img" in page or "<svg" in page
    assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page


def test_html_without_matplotlib_exits_2_with_install_hint(tmp_path, capsys, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)        # import -> ImportError
    path = write_log(tmp_path / "r.log", [record()])
    assert main([path, "--html", str(tmp_path / "x.html")]) == 2
    assert "pip install 'llm-gateway[report]'" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_write_html_can_be_called_directly(tmp_path):
    ds = load([io.BytesIO(as_bytes([record()] * 3))])
    out = tmp_path / "r.html"
    write_html(summarize(ds), ds, str(out))
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "gateway report" in capsys.readouterr().out


def test_module_exposes_cli_guard():
    assert 'if __name__ == "__main__":' in open(report.__file__, encoding="utf-8").read()


def test_schema_2_hedging_shows_hedge_rate_ttft_with_and_without_and_the_extra_cost(tmp_path, capsys):
    plain = [record(schema=2, arm="control", ttft_ms=200.0 + i, hedged=False, hedge_cost_usd=None)
             for i in range(18)]
    hedged = [record(schema=2, arm="control", ttft_ms=800.0, hedged=True, hedge_cost_usd=0.0001)
              for _ in range(2)]
    path = write_log(tmp_path / "r.log", plain + hedged)
    assert main([path, "--format", "json"]) == 0
    arm = orjson.loads(capsys.readouterr().out)["arms"]["control"]
    assert (arm["hedged"], arm["hedge_rate"]) == (2, pytest.approx(0.1))
    assert arm["ttft_p95_hedged_ms"] == 800.0 and arm["ttft_p95_unhedged_ms"] < 300
    assert arm["hedge_cost_usd"] == pytest.approx(0.0002)
    assert main([path]) == 0
    text = capsys.readouterr().out
    assert "hedge rate" in text and "hedge extra cost" in text


def test_an_arm_whose_every_request_hedged_has_its_ttft_from_the_hedged_ones(tmp_path, capsys):
    ttfts = [300.0 + 11.5 * i for i in range(20)]
    path = write_log(tmp_path / "r.log", [record(schema=2, arm="control", ttft_ms=t, hedged=True, hedge_cost_usd=0.0)
                                          for t in ttfts])
    assert main([path, "--format", "json"]) == 0
    arm = orjson.loads(capsys.readouterr().out)["arms"]["control"]
    assert arm["hedge_rate"] == 1.0 and arm["ttft_p95_unhedged_ms"] is None
    assert arm["ttft_p95_hedged_ms"] == arm["ttft_p95_ms"] == pytest.approx(
        quantiles(ttfts, n=20, method="inclusive")[-1])   # type 7, as numpy's default


def test_a_schema_1_log_reads_as_never_hedged(tmp_path, capsys):
    path = write_log(tmp_path / "r.log", [record(arm="control", ttft_ms=100.0 + 7.3 * i) for i in range(23)])
    assert main([path, "--format", "json"]) == 0
    arm = orjson.loads(capsys.readouterr().out)["arms"]["control"]
    assert (arm["hedged"], arm["hedge_rate"], arm["hedge_cost_usd"]) == (0, 0.0, 0.0)
    # nothing hedged: the rest is every request, so its p95 is the TTFT p95
    assert arm["ttft_p95_hedged_ms"] is None and arm["ttft_p95_unhedged_ms"] == arm["ttft_p95_ms"]
    assert main([path]) == 0
    assert "hedge rate" not in capsys.readouterr().out
