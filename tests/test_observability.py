"""The one log line per request, for every outcome; secrets never leak; /metrics
agrees with what was sent; a stuck log sink never stalls the gateway."""

from __future__ import annotations

import os
import socket
import textwrap
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.errors import Scrubber
from gateway.record import LOGGED_FIELDS, SCHEMA_VERSION

from .conftest import ROOT, Gateway, Process, read_log, start_gateway

PROVIDER_KEY = "sk-provider-distinctive-Q7x9Z2"
CLIENT_KEY = "sk-client-distinctive-M4k8P1"
PROMPT = "PROMPT-CANARY-5d1e tell me a secret"
MESSAGES = [{"role": "user", "content": PROMPT}]
SHORT = "timeouts = { connect_s = 0.3, first_token_s = 0.4, idle_s = 0.4, total_s = 5 }"


@pytest.fixture(scope="module")
def blackhole() -> Iterator[int]:
    """A port whose accept queue is full: connecting to it hangs, so connects time out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    filler = socket.create_connection(server.getsockname())
    yield server.getsockname()[1]
    filler.close()
    server.close()


@pytest.fixture(scope="module")
def gw(mock_upstream: Process, blackhole: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    mock = mock_upstream.url
    text = textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        port = 0
        allow_arm_override = true

        [providers.refused]
        dialect = "openai"
        base_url = "http://127.0.0.1:9/v1"
        retry = {{ attempts = 1 }}

        [providers.oa]
        dialect = "openai"
        base_url = "{mock}/oa/v1"
        api_key_env = "OBS_TEST_KEY"
        forward_headers = ["x-mock-"]
        retry = {{ attempts = 1 }}
        {SHORT}

        [providers.an]
        dialect = "anthropic"
        base_url = "{mock}/an"
        api_key_env = "OBS_TEST_KEY"
        forward_headers = ["x-mock-"]
        retry = {{ attempts = 1 }}
        {SHORT}

        [providers.hole]
        dialect = "openai"
        base_url = "http://127.0.0.1:{blackhole}/v1"
        retry = {{ attempts = 1 }}
        {SHORT}

        [providers.deadline]
        dialect = "openai"
        base_url = "{mock}/dl/v1"
        forward_headers = ["x-mock-"]
        retry = {{ attempts = 1 }}
        timeouts = {{ first_token_s = 5, total_s = 0.5 }}

        [routes.oa]
        arms = [{{ name = "control", provider = "oa", model = "gpt-mock", weight = 100 }}]
        [routes.an]
        arms = [{{ name = "canary", provider = "an", model = "claude-mock", weight = 100 }}]
        [routes.hole]
        arms = [{{ name = "only", provider = "hole", model = "m", weight = 100 }}]
        [routes.deadline]
        arms = [{{ name = "only", provider = "deadline", model = "m", weight = 100 }}]
        [routes.refused]
        arms = [{{ name = "only", provider = "refused", model = "m", weight = 100 }}]

        [pricing.gpt-mock]
        input_per_mtok = 2.5
        output_per_mtok = 10.0
        [pricing.claude-mock]
        input_per_mtok = 3.0
        output_per_mtok = 15.0
        """)
    gateway = start_gateway(tmp_path_factory.mktemp("observability"), text, env={"OBS_TEST_KEY": PROVIDER_KEY})
    yield gateway
    gateway.stop()


async def call(gw: Gateway, body: dict | bytes, headers: dict[str, str] | None = None,
               path: str = "/v1/chat/completions") -> tuple[int, bytes, dict]:
    rid = uuid.uuid4().hex
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.url}{path}", data=data,
                                headers={"Authorization": f"Bearer {CLIENT_KEY}", "X-Request-Id": rid,
                                         "Content-Type": "application/json",
                                         **(headers or {})}) as response:
            return response.status, await response.read(), gw.log_for(rid)


def chat(route: str, stream: bool = True) -> dict:
    return {"model": route, "messages": MESSAGES, "stream": stream}


def cost(prompt: int, completion: int, input_price: float, output_price: float) -> float:
    return round((prompt * input_price + completion * output_price) / 1e6, 10)


# prompt "PROMPT-CANARY-5d1e tell me a secret" is 5 words: the mock's prompt_tokens.
OUTCOMES = [
    # id, route, stream, headers, status, outcome, error_code, completion_tokens, usage_source, cost
    ("ok-openai", "oa", True, {}, 200, "ok", None, 12, "upstream", cost(5, 12, 2.5, 10.0)),
    ("ok-anthropic", "an", True, {}, 200, "ok", None, 12, "upstream", cost(5, 12, 3.0, 15.0)),
    ("ok-non-stream", "oa", False, {}, 200, "ok", None, 12, "upstream", cost(5, 12, 2.5, 10.0)),
    ("no-usage-stream", "oa", True, {"X-Mock-Fault": "omit_usage=1"}, 200, "ok", None, 12, "estimated",
     cost(0, 12, 2.5, 10.0)),
    ("no-usage-unary", "oa", False, {"X-Mock-Fault": "omit_usage=1"}, 200, "ok", None, None, "none", None),
    ("upstream-error", "oa", True, {"X-Mock-Fault": "status=500"}, 502, "upstream_error", "upstream_error",
     None, "none", 0.0),
    ("rate-limited", "oa", True, {"X-Mock-Fault": "status=429"}, 429, "upstream_error", "upstream_rate_limited",
     None, "none", 0.0),
    ("upstream-auth-failed", "oa", True, {"X-Mock-Fault": "status=401"}, 502, "upstream_error",
     "upstream_auth_failed", None, "none", 0.0),
    ("upstream-rejects", "oa", True, {"X-Mock-Fault": "status=422"}, 422, "client_error", "upstream_rejected",
     None, "none", 0.0),
    ("timeout-connect", "hole", True, {}, 504, "timeout_connect", "timeout_connect", None, "none", 0.0),
    ("timeout-first-token", "oa", True, {"X-Mock-Fault": "stall=first"}, 504, "timeout_first_token",
     "timeout_first_token", None, "none", 0.0),
    ("timeout-idle", "oa", True, {"X-Mock-Fault": "stall_after=4"}, 200, "timeout_idle", "timeout_idle",
     4, "estimated", cost(0, 4, 2.5, 10.0)),
    ("timeout-total", "deadline", True, {"X-Mock-Fault": "stall=first"}, 504, "timeout_total", "timeout_total",
     None, "none", 0.0),
    ("truncated", "an", True, {"X-Mock-Fault": "truncate_after=5"}, 200, "truncated", "upstream_truncated",
     5, "estimated", cost(5, 5, 3.0, 15.0)),
    ("mid-stream-error", "an", True, {"X-Mock-Fault": "error_after=5"}, 200, "upstream_error", "upstream_error",
     5, "estimated", cost(5, 5, 3.0, 15.0)),
    ("model-not-found", "nope", True, {}, 404, "client_error", "model_not_found", None, "none", 0.0),
]


@pytest.mark.parametrize(("route", "stream", "headers", "status", "outcome", "code", "completion", "source", "usd"),
                         [case[1:] for case in OUTCOMES], ids=[case[0] for case in OUTCOMES])
async def test_each_outcome_is_one_log_line_with_its_fields(
        gw: Gateway, route: str, stream: bool, headers: dict, status: int, outcome: str, code: str | None,
        completion: int | None, source: str, usd: float | None) -> None:
    got_status, _, line = await call(gw, chat(route, stream), headers)
    assert got_status == status
    assert (line["status"], line["outcome"], line["error_code"]) == (status, outcome, code)
    assert (line["completion_tokens"], line["usage_source"]) == (completion, source)
    assert line["cost_usd"] == (pytest.approx(usd, rel=1e-9) if usd is not None else None)
    assert line["schema"] == SCHEMA_VERSION and line["ts"].endswith("Z")
    assert set(line) == set(documented_fields()), "every field on the line is documented, and only those"
    if code is not None:
        documented_outcome, documented_status = documented_error_codes()[code]
        assert documented_outcome == outcome
        assert str(status) in documented_status or ("4xx" in documented_status and 400 <= status < 500)


REFUSED = [
    # id, raw body, headers, status, error_code: refused before any provider answered
    ("invalid-json", b"{nope", {}, 400, "invalid_json"),
    ("invalid-request", b'{"model": "oa", "messages": []}', {}, 400, "invalid_request"),
    ("unknown-arm", orjson.dumps(chat("oa")), {"X-Gateway-Arm-Override": "nobody"}, 400, "unknown_arm"),
    ("request-too-large", b'{"pad": "' + b"a" * 1_100_000 + b'"}', {}, 413, "request_too_large"),
    ("upstream-unreachable", orjson.dumps(chat("refused")), {}, 502, "upstream_unreachable"),
    ("not-json-content-type", orjson.dumps(chat("oa")), {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
]


@pytest.mark.parametrize(("body", "headers", "status", "code"), [case[1:] for case in REFUSED],
                         ids=[case[0] for case in REFUSED])
async def test_each_refusal_is_one_log_line_with_its_documented_code(
        gw: Gateway, body: bytes, headers: dict, status: int, code: str) -> None:
    got_status, response, line = await call(gw, body, headers)
    assert got_status == status and orjson.loads(response)["error"]["code"] == code
    assert (line["status"], line["error_code"], line["usage_source"], line["cost_usd"]) == (status, code, "none", 0.0)
    documented_outcome, documented_status = documented_error_codes()[code]
    assert line["outcome"] == documented_outcome and str(status) in documented_status


def markdown_rows(heading: str) -> list[list[str]]:
    """The body rows of the first table under `heading` in docs/log-schema.md, without backticks."""
    section = (ROOT / "docs" / "log-schema.md").read_text().split(f"\n{heading}\n", 1)[1]
    lines = section.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[first + 2:]:  # after the header row and the |---| row
        if not line.startswith("|"):
            break
        table.append([cell.strip().replace("`", "") for cell in line.strip().strip("|").split("|")])
    return table


def documented_fields() -> list[str]:
    return [row[0] for row in markdown_rows("## Fields")]


def documented_error_codes() -> dict[str, tuple[str, str]]:
    return {row[0]: (row[1], row[2]) for row in markdown_rows("## Error codes")}


def test_the_documented_fields_are_the_fields_the_record_logs() -> None:
    assert sorted(documented_fields()) == sorted(["schema", "event", "ts", *LOGGED_FIELDS])


def test_the_schema_document_names_the_version_the_code_writes() -> None:
    assert f"# Request log schema, version {SCHEMA_VERSION}\n" in (ROOT / "docs" / "log-schema.md").read_text()


def test_every_documented_error_code_is_covered_by_an_outcome_case_or_a_named_test() -> None:
    # client_disconnected: tests/test_disconnect.py; internal_error: the gateway-bug test below;
    # keys and limits: tests/test_auth_limits.py; pool_exhausted: tests/test_hardening.py;
    # bad_http, request_timeout, too_many_streams: tests/test_edge.py; gateway_shutting_down:
    # tests/test_shutdown.py; resume_window_expired, stream_cancelled, resume_buffer_full: tests/test_resume.py.
    elsewhere = {"resume_window_expired", "stream_cancelled", "resume_buffer_full",
                 "client_disconnected", "internal_error", "missing_api_key", "invalid_api_key", "model_not_allowed",
                 "rate_limit_exceeded", "limits_unavailable", "pool_exhausted", "bad_http", "request_timeout",
                 "too_many_streams", "gateway_shutting_down"}
    covered = {case[6] for case in OUTCOMES} | {case[4] for case in REFUSED} | elsewhere
    assert set(documented_error_codes()) == covered - {None}


async def test_a_bad_request_is_one_client_error_line(gw: Gateway) -> None:
    status, _, line = await call(gw, {"model": "oa", "messages": "nope"})
    assert (status, line["outcome"], line["error_code"]) == (400, "client_error", "invalid_request")


async def test_stream_timing_fields_are_ordered(gw: Gateway) -> None:
    _, _, line = await call(gw, chat("oa"), {"X-Mock-Inter-Token-Delay-Ms": "10"})
    assert 0 < line["upstream_connect_ms"] <= line["ttfb_ms"] <= line["ttft_ms"] <= line["latency_ms"]
    assert line["max_gap_ms"] >= line["p95_gap_ms"] > 0
    assert line["events_out"] == 15  # role chunk, 12 tokens, finish chunk, [DONE]
    assert line["bytes_out"] > 0 and line["gateway_overhead_ms"] >= 0


async def test_secrets_and_prompt_text_never_appear_in_logs_or_error_bodies(gw: Gateway) -> None:
    bodies = []
    for route, headers in [("oa", {}), ("an", {}), ("oa", {"X-Mock-Fault": "status=500"}),
                           ("oa", {"X-Mock-Require-Key": "some-other-key"}),
                           ("an", {"X-Mock-Require-Key": "some-other-key"}),
                           ("oa", {"X-Mock-Fault": "drop_after=2"}), ("nope", {})]:
        status, body, line = await call(gw, chat(route), headers)
        bodies.append(body)
    everything = b"".join(bodies) + gw.log_path.read_bytes() + gw.stderr_path.read_bytes()
    for secret in (PROVIDER_KEY, CLIENT_KEY, "PROMPT-CANARY"):
        assert secret.encode() not in everything


async def test_the_provider_key_reaches_the_provider(gw: Gateway, mock_upstream: Process) -> None:
    # The other side of the secrets test: the key is used, just never shown, nor kept by the mock.
    tag = uuid.uuid4().hex
    for route in ("oa", "an"):
        status, _, _ = await call(gw, chat(route), {"X-Mock-Require-Key": PROVIDER_KEY, "X-Mock-Tag": tag})
        assert status == 200
    assert [r["api_key"] for r in mock_upstream.mock_records(tag)] == ["matched", "matched"]
    with urllib.request.urlopen(f"{mock_upstream.url}/_mock/requests") as response:
        assert PROVIDER_KEY.encode() not in response.read()


async def test_a_refused_provider_key_is_a_502_not_the_clients_401(gw: Gateway) -> None:
    status, body, line = await call(gw, chat("oa"), {"X-Mock-Require-Key": "some-other-key"})
    assert status == 502
    assert orjson.loads(body)["error"]["code"] == "upstream_auth_failed"


def test_scrubber_masks_known_secrets_and_key_shapes() -> None:
    scrub = Scrubber(["hunter2-long-secret"])
    assert scrub("key hunter2-long-secret leaked") == "key [redacted] leaked"
    assert scrub("Authorization: Bearer abcdefgh12345678") == "Authorization: Bearer [redacted]"
    assert scrub("bad key sk-proj-abcdefghijkl") == "bad key [redacted]"
    assert scrub("nothing secret here") == "nothing secret here"


# --- /metrics ------------------------------------------------------------------------------------

@pytest.fixture
def fresh_gateway(mock_upstream: Process, tmp_path: Path) -> Iterator[Gateway]:
    from .conftest import config_text

    gateway = start_gateway(tmp_path, config_text(mock_upstream.url))
    yield gateway
    gateway.stop()


async def metric_samples(gw: Gateway) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.url}/metrics") as response:
            text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_parse_and_count_what_was_sent(fresh_gateway: Gateway) -> None:
    gw = fresh_gateway
    for _ in range(3):
        await call(gw, chat("openai-only"))
    for _ in range(2):
        await call(gw, chat("openai-only"), {"X-Mock-Fault": "status=400"})
    await call(gw, chat("anthropic-only", stream=False))
    samples = await metric_samples(gw)
    oa = {"route": "openai-only", "arm": "only", "provider": "oa"}
    assert samples[sample("gateway_requests_total", **oa, outcome="ok")] == 3
    assert samples[sample("gateway_requests_total", **oa, outcome="client_error")] == 2
    assert samples[sample("gateway_requests_total", route="anthropic-only", arm="only", provider="an",
                          outcome="ok")] == 1
    assert samples[sample("gateway_ttft_seconds_count", **oa)] == 3
    assert samples[sample("gateway_tokens_total", **oa, kind="completion")] == 36
    assert samples[sample("gateway_cost_usd_total", **oa)] == pytest.approx(3 * (5 * 2.5 + 12 * 10.0) / 1e6)
    assert samples[sample("gateway_requests_in_flight", endpoint="chat_completions")] == 0
    assert samples[sample("gateway_upstream_connections_in_use", provider="oa")] == 0
    assert samples[sample("gateway_upstream_connections_limit", provider="oa")] == 100


def sample(name: str, **labels: str) -> tuple[str, tuple]:
    return name, tuple(sorted(labels.items()))


async def test_workers_share_the_port_and_their_metrics_and_log(mock_upstream: Process, tmp_path: Path) -> None:
    from .conftest import config_text

    gw = start_gateway(tmp_path, config_text(mock_upstream.url), args=("--workers", "2"))
    try:
        children = Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()
        assert len(children) == 2
        connector = aiohttp.TCPConnector(force_close=True)  # a new connection each time: both workers serve
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(20):
                async with session.post(f"{gw.url}/v1/chat/completions",
                                        json={"model": "openai-only", "messages": MESSAGES}) as response:
                    assert response.status == 200
        samples = await metric_samples(gw)
        key = sample("gateway_requests_total", route="openai-only", arm="only", provider="oa", outcome="ok")
        assert samples[key] == 20
        assert all(line["outcome"] == "ok" for line in read_log(gw.log_path, 20))
    finally:
        gw.stop()
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)


# --- a stuck log sink ----------------------------------------------------------------------------

async def test_a_log_sink_nobody_reads_never_stalls_requests(mock_upstream: Process, tmp_path: Path) -> None:
    from .conftest import config_text

    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read until the end
    gw = start_gateway(tmp_path, config_text(mock_upstream.url), log_path=fifo)
    try:
        # ~1 KB per line: 300 lines are far more than a pipe holds (64 KiB). A logger that
        # wrote on the event loop would block on the full pipe: the timeout turns that hang
        # into a failure.
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for _ in range(300):
                async with session.post(f"{gw.url}/v1/chat/completions",
                                        json={"model": "openai-only", "messages": MESSAGES},
                                        headers={"X-Mock-Tokens": "1"}) as response:
                    assert response.status == 200
        data = b""
        os.set_blocking(reader, True)
        while data.count(b"\n") < 300:
            data += os.read(reader, 1 << 20)
        assert all(orjson.loads(line)["outcome"] == "ok" for line in data.splitlines())
    finally:
        gw.stop()
        os.close(reader)


# --- a bug in the gateway ------------------------------------------------------------------------

async def test_a_gateway_bug_is_a_generic_500_and_one_gateway_error_line(
        mock_upstream: Process, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    from aiohttp.test_utils import TestServer

    import gateway.app
    from gateway.config import parse_config
    from gateway.record import RequestLog

    from .conftest import config_text

    async def broken(request: object, limit: int) -> dict:
        raise RuntimeError(f"boom with {PROVIDER_KEY} inside")

    monkeypatch.setattr(gateway.app, "read_json", broken)
    text = config_text(mock_upstream.url).replace('[providers.oa]', '[providers.oa]\napi_key_env = "OBS_TEST_KEY"')
    config = parse_config(tomllib.loads(text), "test", {"OBS_TEST_KEY": PROVIDER_KEY})
    log_path = tmp_path / "requests.log"
    log = RequestLog(str(log_path))
    server = TestServer(gateway.app.build_app(config, log=log), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(server.make_url("/v1/chat/completions"), json=chat("openai-only")) as response:
                body = await response.read()
                assert response.status == 500
    finally:
        await server.close()
        log.close()
    error = orjson.loads(body)["error"]
    assert (error["code"], error["message"]) == ("internal_error", "The gateway failed to handle the request")
    [line] = [orjson.loads(raw) for raw in log_path.read_bytes().splitlines()]
    assert (line["status"], line["outcome"], line["error_code"]) == (500, "gateway_error", "internal_error")
    assert line["error_message"].startswith("RuntimeError: boom") and PROVIDER_KEY not in line["error_message"]
