"""gateway report on DuckDB: what it reads (globs, gzip, stdin, odd values,
odd timestamps, newer schemas) and what it says when it cannot."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
from datetime import timedelta

import orjson
import pytest

from gateway.report import load, main, render_json, summarize
from gateway.report.errors import ReportError

from .conftest import ROOT
from .test_report import T0, as_bytes, record, write_log


def test_glob_of_gzipped_rotated_files_from_many_instances_is_read(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    for instance in ("gw-a", "gw-b"):
        for rotation in range(3):
            write_log(logs / f"{instance}.{rotation}.jsonl.gz", [record(arm="canary")] * 2, gz=True)
    write_log(logs / "other.txt", [record()] * 50)  # not matched by the glob
    assert main([str(logs / "*.jsonl.gz"), "--format", "json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["arms"]["canary"]["requests"] == 12 and "control" not in doc["arms"]
    assert len(doc["meta"]["sources"]) == 6


def test_a_glob_matching_nothing_exits_1_with_message(tmp_path, capsys):
    assert main([str(tmp_path / "*.jsonl.gz")]) == 1
    assert "no file matches" in capsys.readouterr().err


def test_plain_and_gzip_files_mix_in_one_run(tmp_path):
    a = write_log(tmp_path / "a.log", [record(arm="control")] * 2)
    b = write_log(tmp_path / "b.log", [record(arm="control")] * 3, gz=True)
    with load([a, b]) as ds:
        assert ds.arms["control"].requests == 5 and ds.malformed == 0


def test_a_damaged_gzip_among_good_files_keeps_every_readable_line(tmp_path):
    good = write_log(tmp_path / "good.log.gz", [record(arm="canary")] * 3, gz=True)
    data = gzip.compress(as_bytes([record()] * 2000))
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(data[: len(data) // 2])
    with load([good, str(cut)]) as ds:
        assert ds.arms["canary"].requests == 3
        assert 0 < ds.arms["control"].requests < 2000
        assert any("unreadable input" in ex for ex in ds.malformed_examples)


def test_lines_from_the_typed_and_the_text_scan_give_the_same_figures(tmp_path):
    recs = [record(ttft_ms=10.0 + i, latency_ms=100.0 + i, cost_usd=0.001 * i) for i in range(50)]
    clean = write_log(tmp_path / "clean.log", recs)
    dirty = tmp_path / "dirty.log"
    dirty.write_bytes(as_bytes(recs) + b"not json\n")  # forces the strict text scan
    with load([clean]) as a, load([str(dirty)]) as b:
        assert b.malformed == 1 and a.malformed == 0
        ra, rb = summarize(a).arms["control"], summarize(b).arms["control"]
        assert ra == rb


def test_a_value_of_the_wrong_type_is_a_counted_malformed_line():
    with load([_stream([record(), record(latency_ms="slow"), record(prompt_tokens={"n": 1})])]) as ds:
        assert ds.requests == 1 and ds.malformed == 2
        assert any("latency_ms" in ex for ex in ds.malformed_examples)


def test_malformed_examples_name_the_file_and_line(tmp_path):
    path = tmp_path / "r.log"
    path.write_bytes(as_bytes([record(), record()]) + b"oops\n")
    with load([str(path)]) as ds:
        assert ds.malformed_examples == [f"{path}:3: not a JSON object with an 'event' field"]


def test_schema_versions_above_1_are_read_and_below_1_skipped():
    with load([_stream([record(schema=1), record(schema=2), record(schema=7), record(schema=0)])]) as ds:
        assert ds.requests == 3 and ds.skipped == 1


def test_unknown_fields_are_ignored():
    with load([_stream([record(new_field={"nested": [1, 2]}, another="x")])]) as ds:
        assert ds.requests == 1 and ds.malformed == 0


def test_a_missing_nullable_field_reads_as_null():
    rec = record()
    del rec["ttft_ms"]
    with load([_stream([rec])]) as ds:
        assert ds.requests == 1 and ds.arms["control"].ttft.n == 0


def test_route_filter_is_a_parameter_not_sql(tmp_path, capsys):
    odd = "chat'; DROP TABLE lines; --"
    path = write_log(tmp_path / "r.log", [record(route=odd)] * 2 + [record()])
    assert main([path, "--route", odd, "--format", "json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["arms"]["control"]["requests"] == 2


def test_leap_second_is_read_as_the_last_microsecond_of_its_minute():
    with load([_stream([record(ts="9999-12-31T23:59:60Z"), record(ts="2016-12-31T23:59:60.5Z")])]) as ds:
        assert ds.requests == 2
        rep = summarize(ds)
        assert rep.arms["control"].ts_last == "9999-12-31T23:59:59.999Z"
        assert rep.arms["control"].ts_first == "2016-12-31T23:59:59.999Z"


def test_a_timestamp_beyond_year_9999_is_a_counted_malformed_line():
    with load([_stream([record(), record(ts="10000-01-01T00:00:00Z")])]) as ds:
        assert ds.requests == 1 and ds.malformed == 1
        assert "out of range" in ds.malformed_examples[0]


def test_a_timestamp_without_offset_is_malformed():
    with load([_stream([record(ts="2026-11-26T04:00:00")])]) as ds:
        assert ds.malformed == 1


def test_year_1_timestamp_with_html_writes_the_page(tmp_path, capsys):
    recs = [record(ts="0001-01-01T00:00:00Z")] + [record(ts=T0 + timedelta(seconds=i)) for i in range(30)]
    path = write_log(tmp_path / "r.log", recs)
    out = tmp_path / "r.html"
    assert main([path, "--html", str(out)]) == 0
    assert "data:image/png;base64," in out.read_text(encoding="utf-8")


def test_cost_of_1e308_on_two_lines_gives_the_mean_and_a_message_not_a_traceback(capsys):
    with load([_stream([record(cost_usd=1e308), record(cost_usd=1e308)])]) as ds:
        rep = summarize(ds)
    s = rep.arms["control"]
    assert s.cost_per_request_usd == 1e308
    assert s.cost_usd is None
    assert any("exceeds the largest double" in w for w in rep.warnings)
    assert orjson.loads(render_json(rep))["arms"]["control"]["cost_usd"] is None


def test_latencies_near_1e308_give_their_mean_not_inf():
    with load([_stream([record(latency_ms=1e308), record(latency_ms=1.5e308)])]) as ds:
        rep = summarize(ds)
    assert rep.arms["control"].latency_mean_ms == 1.25e308


def test_an_arms_figures_gather_every_outcome_and_hedge_group():
    import math
    import random

    import numpy as np
    from scipy import stats

    rng = random.Random(11)
    recs = []
    for _ in range(60):
        outcome = rng.choice(["ok", "ok", "ok", "upstream_error", "truncated", "timeout_idle"])
        hedged = rng.random() < 0.3
        recs.append(record(schema=2, arm=rng.choice(["control", "canary"]), outcome=outcome,
                           ttft_ms=round(rng.uniform(50, 900), 1), latency_ms=round(rng.uniform(500, 3000), 1),
                           cost_usd=round(rng.uniform(0.0001, 0.003), 6), hedged=hedged,
                           hedge_cost_usd=0.0001 if hedged else None))
    recs.append(record(schema=2, arm="canary", outcome="client_disconnected", cost_usd=0.002,
                       hedged=False))  # a group of one
    with load([_stream(recs)]) as ds:
        rep = summarize(ds, control="control")
    for arm in ("control", "canary"):
        mine = [r for r in recs if r["arm"] == arm]
        ok = [r["latency_ms"] for r in mine if r["outcome"] == "ok"]
        a, s = ds.arms[arm], rep.arms[arm]
        assert (a.requests, a.successes, a.hedged) == (len(mine), len(ok), sum(r["hedged"] for r in mine))
        assert a.outcomes == {o: sum(r["outcome"] == o for r in mine) for o in {r["outcome"] for r in mine}}
        assert s.ttft_p50_ms == pytest.approx(np.percentile([r["ttft_ms"] for r in mine], 50), rel=1e-12)
        assert s.latency_p95_ms == pytest.approx(np.percentile(ok, 95), rel=1e-12)
        assert s.latency_mean_ms == pytest.approx(math.fsum(ok) / len(ok), rel=1e-15)
        hedged = [r["ttft_ms"] for r in mine if r["hedged"]]
        assert a.ttft_p95_hedged_ms == pytest.approx(np.percentile(hedged, 95), rel=1e-12)
        assert a.hedge_cost_usd == pytest.approx(0.0001 * len(hedged), rel=1e-12)
        assert s.cost_usd == pytest.approx(math.fsum(r["cost_usd"] for r in mine), rel=1e-15)
    costs = {arm: [r["cost_usd"] for r in recs if r["arm"] == arm] for arm in ("control", "canary")}
    welch = stats.ttest_ind(costs["canary"], costs["control"], equal_var=False).pvalue
    assert rep.comparisons[0].cost.p_value == pytest.approx(welch, rel=1e-9)


def test_token_counts_beyond_64_bits_are_summed_exactly():
    big = 2**63
    huge = 2**100
    with load([_stream([record(prompt_tokens=big, completion_tokens=huge)] * 2)]) as ds:
        rep = summarize(ds)
    assert rep.arms["control"].prompt_tokens == 2**64
    assert rep.arms["control"].completion_tokens == 2**101
    doc = json.loads(render_json(rep))  # the stdlib reads integers exactly
    assert doc["arms"]["control"]["prompt_tokens"] == 2**64
    assert doc["arms"]["control"]["completion_tokens"] == 2**101


def test_token_sums_beyond_128_bits_are_still_exact():
    near = 2**126
    with load([_stream([record(prompt_tokens=near)] * 4)]) as ds:
        assert summarize(ds).arms["control"].prompt_tokens == 2**128


def test_a_token_count_beyond_128_bits_is_a_counted_malformed_line():
    with load([_stream([record(), record(prompt_tokens=2**130)])]) as ds:
        assert ds.requests == 1 and ds.malformed == 1
        assert "prompt_tokens" in ds.malformed_examples[0]


def test_duckdb_works_in_a_private_temp_directory_removed_on_close():
    ds = load([_stream([record()])])
    tmp = ds.engine.tmp
    setting = ds.engine.con.execute("SELECT current_setting('temp_directory')").fetchone()[0]
    assert setting == tmp and os.path.dirname(tmp) == tempfile.gettempdir()
    ds.close()
    assert not os.path.exists(tmp)


def test_without_duckdb_the_report_names_the_install_command(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "duckdb.py").write_text("raise ImportError('No module named duckdb (test shim)')\n")
    log = write_log(tmp_path / "r.log", [record()])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim), str(ROOT)]))
    result = subprocess.run([sys.executable, "-m", "gateway", "report", log],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode != 0
    assert "pip install 'llm-gateway[report]'" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _stream(records: list) -> io.BytesIO:
    """Records as a log stream; the standard library writes integers of any size."""
    return io.BytesIO("".join(json.dumps(r) + "\n" for r in records).encode())


def _modes_of(engine, path, route: str) -> dict:
    """Each read mode's rows for the lines of ``path`` (None: the mode refused them)."""
    import duckdb

    from gateway.report.dataset import _classify_sql, _quick_sql, _scan

    params = {"plain": [str(path)], "since_us": 10**15, "route": route}  # since 2001-09-09
    sqls = {"quick": _quick_sql(_scan("plain", "none", True, True, file=False), True),
            "typed": _classify_sql(_scan("plain", "none", True, True), True, True),
            "text": _classify_sql(_scan("plain", "none", False, True), False, True)}
    rows = {}
    for mode, sql in sqls.items():
        try:
            rows[mode] = [tuple("NaN" if x != x else x for x in row) for row in engine.con.execute(  # NaN == NaN
                f"SELECT kind, arm, outcome, us, ttft, lat, cost, pt, ct, fb, hg, hcost FROM ({sql})",
                params).fetchall()]
        except duckdb.InvalidInputException:
            rows[mode] = None
    return rows


def test_the_quick_typed_and_text_reads_agree_line_by_line(tmp_path):
    """The one-pass scan (the fast path), the typed table and the text table
    (dataset.py) either refuse a line or give it the same kind and values."""
    from gateway.report.engine import Engine

    def without(field: str, **over) -> dict:
        rec = record(**over)
        del rec[field]
        return rec

    recs = [record(), record(arm="canary", ttft_ms=None), record(arm=None), record(route="other"),
            record(ttft_ms=-1.0), record(latency_ms=-0.5), record(cost_usd=-1e-9), record(prompt_tokens=-1),
            record(completion_tokens=-3), record(ts="2026-11-26T04:00:00"), record(ts="2016-12-31T23:59:60Z"),
            record(ts="2026-11-26T05:00:00.5+01:00"), record(ts="0000-12-31T23:59:59Z"), record(ts="soon"),
            record(ts="2000-01-01T00:00:00Z"), record(schema=0), record(schema=None),
            record(event="startup"), without("event"), without("ts"), without("outcome"),
            without("fallback_used"), record(fallback_used=True), record(prompt_tokens=2**100),
            record(ts=" 2026-11-26T04:00:00.123Z"), record(ts="2026-11-26T04:00:00.123Z "),
            record(completion_tokens=1.5), record(completion_tokens="12"), record(hedged=True, hedge_cost_usd=0.5),
            record(ttft_ms="fast"), record(fallback_used="maybe"),
            # what the typed reader converts, the text read converts alike
            record(fallback_used="no"), record(fallback_used="yes"), record(fallback_used=1),
            record(fallback_used=0.0), record(hedged="t"), record(hedged=2), record(prompt_tokens=True),
            record(ttft_ms=True), record(schema=True), record(cost_usd="0.5"), record(ttft_ms="NaN")]
    engine = Engine()
    try:
        accepted = {"quick": 0, "typed": 0}
        kinds = []
        for n, rec in enumerate(recs):
            path = tmp_path / f"{n}.log"
            path.write_text(json.dumps(rec) + "\n")   # json: 2**100 is beyond orjson
            rows = _modes_of(engine, path, "chat")
            assert rows["text"] is not None, rec
            for mode in ("quick", "typed"):
                if rows[mode] is not None:
                    assert rows[mode] == rows["text"], (mode, rec, rows)
                    accepted[mode] += 1
            kinds.append(rows["text"][0][0])
        # the typed reads refuse the two values of the wrong JSON type (the text read names them)
        assert accepted == {"quick": len(recs) - 2, "typed": len(recs) - 2}
        # the line of 2000 is filtered, like the route "other"
        assert [kinds.count(k) for k in range(5)] == [20, 17, 2, 2, 1]
    finally:
        engine.close()


def test_the_gateways_own_lines_are_read_by_the_quick_scan(tmp_path):
    """A log as the gateway writes it (schema 2) takes the fast path."""
    from gateway.report.engine import Engine

    path = tmp_path / "r.log"
    write_log(path, [record(schema=2, hedged=False, hedge_cost_usd=None), record()])
    engine = Engine()
    try:
        rows = _modes_of(engine, path, "chat")
        assert rows["quick"] is not None and rows["quick"] == rows["text"]
        assert [r[0] for r in rows["quick"]] == [0, 0]
    finally:
        engine.close()


def test_a_clean_log_is_read_in_one_pass_without_a_table(tmp_path):
    path = tmp_path / "r.log"
    write_log(path, [record(), record(arm="canary")])
    with load([str(path)]) as ds:
        assert ds.reader.mode == "quick" and ds.reader.source != "lines"
        assert ds.requests == 2


def test_a_malformed_line_takes_the_typed_table_with_the_same_figures_for_the_rest(tmp_path):
    dirty, clean = tmp_path / "dirty.log", tmp_path / "clean.log"
    write_log(dirty, [record(ts="2026-11-26T05:00:00.000+01:00"), record(), record(ttft_ms=-1.0)])
    write_log(clean, [record(), record()])
    with load([str(dirty)]) as a, load([str(clean)]) as b:
        assert a.reader.mode == "typed" and b.reader.mode == "quick" and a.malformed == 1
        doc_a, doc_b = (orjson.loads(render_json(summarize(ds))) for ds in (a, b))
        assert doc_a["arms"] == doc_b["arms"] and doc_a["comparisons"] == doc_b["comparisons"]


def test_a_line_that_is_not_json_takes_the_text_read(tmp_path):
    path = tmp_path / "r.log"
    path.write_bytes(as_bytes([record()]) + b"not json\n")
    with load([str(path)]) as ds:
        assert ds.reader.mode == "text" and ds.requests == 1 and ds.malformed == 1


def test_the_charts_of_a_log_read_in_one_pass_read_it_again(tmp_path):
    path = tmp_path / "r.log"
    write_log(path, [record()] * 3)
    with load([str(path)]) as ds:
        assert ds.reader.source != "lines"
        rows = ds.over_time(ds.arms["control"].first_us, 60)
        assert [r[2] for r in rows] == [3] and ds.reader.source == "lines"


def test_a_log_that_grew_before_its_charts_were_drawn_is_an_error_not_a_wrong_chart(tmp_path):
    path = tmp_path / "r.log"
    write_log(path, [record()] * 3)
    with load([str(path)]) as ds:
        with open(path, "ab") as f:
            f.write(as_bytes([record()]))
        for _ in range(2):   # and again: no chart of the grown log's lines
            with pytest.raises(ReportError, match="changed while they were read"):
                ds.over_time(ds.arms["control"].first_us, 60)


def test_tiny_costs_are_summed_on_scaled_values_exactly(tmp_path):
    costs = [3e-160, 5e-160, 1e-159]
    with load([_stream([record(cost_usd=c) for c in costs])]) as ds:
        a = ds.arms["control"]
        assert a.cost_usd == sum(costs)   # exact here: fsum of scaled values, scaled back
        assert a.cost_exp != 0


def test_a_log_gone_before_its_charts_were_drawn_is_an_error(tmp_path):
    path = tmp_path / "r.log"
    write_log(path, [record()] * 3)
    with load([str(path)]) as ds:
        path.unlink()
        with pytest.raises(ReportError, match="cannot read the logs again"):
            ds.over_time(ds.arms["control"].first_us, 60)
