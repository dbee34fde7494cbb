"""Gateway keys and per-key limits, through real gateway processes (and a real redis-server)."""

from __future__ import annotations

import asyncio
import hmac
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway import keys
from gateway.config import GatewayKey

from .conftest import (
    ROOT,
    Gateway,
    Process,
    Redis,
    config_text,
    start_gateway,
    start_redis,
)

PROVIDER_KEY = "sk-provider-for-auth-tests-J8v2Lq"
WEB_KEY = "gk-web-client-key-0123456789abcdef"
BATCH_KEY = "gk-batch-client-key-fedcba9876543210"
METERED_KEY = "gk-metered-client-key-55555555555"
PROMPT = "PROMPT-AUTH-CANARY-77 hello"


def key_table(name: str, key: str, extra: str = "") -> str:
    return f'[[auth.keys]]\nname = "{name}"\nhash = "{keys.hash_key(key)}"\n{extra}\n'


def gateway_with_keys(mock: Process, tmp: Path, key_tables: str, store: str = "") -> Gateway:
    tmp.mkdir(parents=True, exist_ok=True)
    text = config_text(mock.url, key_tables + store)
    text = text.replace("[providers.oa]", '[providers.oa]\napi_key_env = "AUTH_TEST_KEY"', 1)
    return start_gateway(tmp, text, env={"AUTH_TEST_KEY": PROVIDER_KEY})


@pytest.fixture(scope="module")
def keyed(mock_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tables = (key_table("web", WEB_KEY, 'routes = ["openai-only"]')
              + key_table("batch", BATCH_KEY, "rpm = 5") + key_table("metered", METERED_KEY, "rpm = 1"))
    gw = gateway_with_keys(mock_upstream, tmp_path_factory.mktemp("keyed"), tables)
    yield gw
    gw.stop()


async def post(url: str, body: dict | None = None, headers: dict[str, str] | None = None,
               path: str = "/v1/chat/completions") -> tuple[int, dict[str, str], bytes]:
    body = body if body is not None else chat("openai-only")
    async with aiohttp.ClientSession() as session:
        async with session.post(url + path, json=body, headers=headers or {}) as response:
            return response.status, dict(response.headers), await response.read()


def chat(model: str, stream: bool = False, **extra: object) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": stream, **extra}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_out_a_minute_boundary() -> None:
    # The limits count in minute windows on the wall clock; a boundary inside a short test
    # would make the sliding window's weights (not the rule) decide the count.
    if time.time() % 60 > 55:
        time.sleep(60 - time.time() % 60 + 0.1)


# --- the key check, unit -----------------------------------------------------------------

def test_a_hashed_key_verifies_and_another_does_not() -> None:
    key = GatewayKey("k", keys.hash_key(WEB_KEY))
    assert keys.find_key([key], WEB_KEY) is key
    assert keys.find_key([key], WEB_KEY[:-1]) is None


def test_every_configured_key_is_compared_in_constant_time_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    configured = [GatewayKey(f"k{i}", keys.hash_key(f"gk-key-number-{i:04d}-padding")) for i in range(5)]
    compared = []
    real_compare = hmac.compare_digest

    def counting_compare(a: bytes, b: bytes) -> bool:
        compared.append(len(a))
        return real_compare(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", counting_compare)
    for presented in ("gk-key-number-0000-padding", "gk-key-number-0004-padding", "nope"):
        compared.clear()
        keys.find_key(configured, presented)
        assert compared == [32] * 5  # all five, digests of one length: no early exit, no length leak


def test_hash_key_prints_config_lines_that_accept_the_printed_key(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "gateway", "hash-key", "--name", "web"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    key = result.stdout.split("stored nowhere): ")[1].split()[0]
    hashed = result.stdout.split('hash = "')[1].split('"')[0]
    assert key.startswith("gk-") and key not in hashed
    assert keys.find_key([GatewayKey("web", hashed)], key) is not None


def test_hash_key_reads_an_existing_key_from_stdin_never_from_argv() -> None:
    result = subprocess.run([sys.executable, "-m", "gateway", "hash-key", "--stdin"], cwd=ROOT,
                            input=WEB_KEY + "\n", capture_output=True, text=True, check=True)
    hashed = result.stdout.split('hash = "')[1].split('"')[0]
    assert keys.find_key([GatewayKey("client", hashed)], WEB_KEY) is not None and WEB_KEY not in result.stdout


# --- open or not ----------------------------------------------------------------------------

def check_config(tmp: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp / "gateway.toml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)], cwd=ROOT,
                          capture_output=True, text=True)


def test_no_keys_on_a_public_address_refuses_to_start(tmp_path: Path) -> None:
    text = config_text("http://127.0.0.1:1").replace('host = "127.0.0.1"', 'host = "0.0.0.0"', 1)
    result = check_config(tmp_path, text)
    assert result.returncode == 1 and "allow_open = true" in result.stderr


def test_allow_open_written_in_the_config_lets_it_start_open(tmp_path: Path) -> None:
    text = config_text("http://127.0.0.1:1", "[auth]\nallow_open = true\n").replace(
        'host = "127.0.0.1"', 'host = "0.0.0.0"', 1)
    assert check_config(tmp_path, text).returncode == 0


def test_keys_on_a_public_address_start(tmp_path: Path) -> None:
    text = config_text("http://127.0.0.1:1", key_table("web", WEB_KEY)).replace(
        'host = "127.0.0.1"', 'host = "0.0.0.0"', 1)
    assert check_config(tmp_path, text).returncode == 0


def test_a_gateway_without_keys_says_at_startup_that_it_runs_open(gateway: Gateway) -> None:
    assert "gateway runs open" in gateway.stderr_path.read_text()


def test_a_key_hash_that_is_not_a_hash_is_a_config_error(tmp_path: Path) -> None:
    text = config_text("http://127.0.0.1:1", f'[[auth.keys]]\nname = "web"\nhash = "{WEB_KEY}"\n')
    result = check_config(tmp_path, text)
    assert result.returncode == 1 and "auth.keys[0].hash" in result.stderr and WEB_KEY not in result.stderr


# --- authentication through the gateway --------------------------------------------------------

async def test_a_request_without_a_key_is_401(keyed: Gateway) -> None:
    status, _, body = await post(keyed.url, headers={"X-Request-Id": "no-key"})
    assert status == 401 and orjson.loads(body)["error"]["code"] == "missing_api_key"
    line = keyed.log_for("no-key")
    assert (line["status"], line["outcome"], line["error_code"]) == (401, "client_error", "missing_api_key")


async def test_a_wrong_key_is_401_and_logged_without_a_key_name(keyed: Gateway) -> None:
    status, headers, body = await post(keyed.url, headers={**bearer("gk-not-a-real-key-000000"),
                                                           "X-Request-Id": "wrong-key"})
    assert status == 401 and orjson.loads(body)["error"]["code"] == "invalid_api_key"
    line = keyed.log_for("wrong-key")
    assert (line["outcome"], line["error_code"], line["key_name"]) == ("client_error", "invalid_api_key", None)


async def test_a_valid_bearer_key_is_served_and_its_name_logged(keyed: Gateway) -> None:
    status, _, _ = await post(keyed.url, headers={**bearer(WEB_KEY), "X-Request-Id": "good-bearer"})
    assert status == 200 and keyed.log_for("good-bearer")["key_name"] == "web"


async def test_an_x_api_key_header_is_accepted_as_anthropic_clients_send_it(keyed: Gateway) -> None:
    status, _, _ = await post(keyed.url, headers={"x-api-key": WEB_KEY, "X-Request-Id": "good-x-api-key"})
    assert status == 200 and keyed.log_for("good-x-api-key")["key_name"] == "web"


async def test_a_key_may_only_use_its_routes(keyed: Gateway) -> None:
    status, _, body = await post(keyed.url, chat("chat"), {**bearer(WEB_KEY), "X-Request-Id": "other-route"})
    assert status == 403 and orjson.loads(body)["error"]["code"] == "model_not_allowed"
    assert keyed.log_for("other-route")["error_code"] == "model_not_allowed"


async def test_the_client_key_never_goes_upstream_and_no_secret_is_ever_shown(
        keyed: Gateway, mock_upstream: Process) -> None:
    bodies = []
    for headers, model, stream in [({}, "openai-only", False), (bearer("gk-wrong-key-000000000"), "openai-only", True),
                                   (bearer(WEB_KEY), "openai-only", True), (bearer(WEB_KEY), "chat", False),
                                   ({"x-api-key": WEB_KEY, "X-Mock-Fault": "status=401"}, "openai-only", True),
                                   ({**bearer(WEB_KEY), "X-Mock-Tag": "auth-upstream"}, "openai-only", False)]:
        bodies.append((await post(keyed.url, chat(model, stream), headers))[2])
    [seen] = mock_upstream.mock_records("auth-upstream")
    assert WEB_KEY not in orjson.dumps(seen["headers"]).decode()
    everything = b"".join(bodies) + keyed.log_path.read_bytes() + keyed.stderr_path.read_bytes()
    for secret in (PROVIDER_KEY, WEB_KEY, BATCH_KEY, PROMPT):
        assert secret.encode() not in everything


# --- limits on one worker ------------------------------------------------------------------------

async def test_rpm_admits_exactly_its_count_then_429_with_retry_after_and_ratelimit_headers(keyed: Gateway) -> None:
    wait_out_a_minute_boundary()
    statuses = []
    for i in range(7):
        status, headers, body = await post(keyed.url, headers={**bearer(BATCH_KEY), "X-Request-Id": f"rpm-{i}"})
        statuses.append(status)
    assert statuses == [200] * 5 + [429, 429]
    assert int(headers["Retry-After"]) >= 1
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("5", "0")
    error = orjson.loads(body)["error"]
    assert (error["code"], error["type"], error["param"]) == ("rate_limit_exceeded", "rate_limit_error", "rpm")
    line = keyed.log_for("rpm-5")
    assert (line["status"], line["outcome"], line["error_code"]) == (429, "rate_limited", "rate_limit_exceeded")
    assert line["ratelimit"] == {"rpm": {"limit": 5, "remaining": 0}, "hit": "rpm"}
    assert keyed.log_for("rpm-2")["ratelimit"] == {"rpm": {"limit": 5, "remaining": 2}, "hit": None}


async def test_an_admitted_response_carries_the_ratelimit_headers(
        mock_upstream: Process, tmp_path: Path) -> None:
    gw = gateway_with_keys(mock_upstream, tmp_path, key_table("k", WEB_KEY, "rpm = 100\ntpm = 100000"))
    try:
        status, headers, _ = await post(gw.url, headers=bearer(WEB_KEY))
    finally:
        gw.stop()
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "100" and headers["x-ratelimit-limit-tokens"] == "100000"
    assert headers["x-ratelimit-reset-requests"].endswith("s")


async def test_tpm_reserves_max_tokens_and_settles_to_the_usage(mock_upstream: Process, tmp_path: Path) -> None:
    # The mock answers 12 completion tokens for a prompt it counts as 4: 16 a request. Each
    # reserves its prompt estimate (7) plus max_tokens (40) = 47 while it runs, then settles to 16.
    gw = gateway_with_keys(mock_upstream, tmp_path, key_table("k", WEB_KEY, "tpm = 100"))
    wait_out_a_minute_boundary()
    try:
        statuses = []
        for i in range(8):
            status, _, _ = await post(gw.url, chat("openai-only", max_tokens=40),
                                      {**bearer(WEB_KEY), "X-Request-Id": f"tpm-{i}"})
            statuses.append(status)
            await asyncio.sleep(0.05)  # the settlement runs right after the response
        lines = [gw.log_for(f"tpm-{i}") for i in range(8)]
    finally:
        gw.stop()
    used = [line["prompt_tokens"] + line["completion_tokens"] for line in lines if line["outcome"] == "ok"]
    admitted = statuses.count(200)
    # Admitted while what was used so far plus this request's reservation fits in 100.
    assert sum(used[:admitted - 1]) + 47 <= 100 < sum(used[:admitted]) + 47
    assert statuses == [200] * admitted + [429] * (8 - admitted)
    assert lines[admitted]["ratelimit"]["hit"] == "tpm"


async def test_concurrency_admits_up_to_its_limit_and_frees_the_slot_at_the_end(
        mock_upstream: Process, tmp_path: Path) -> None:
    gw = gateway_with_keys(mock_upstream, tmp_path, key_table("k", WEB_KEY, "max_concurrent = 2"))
    slow = {**bearer(WEB_KEY), "X-Mock-Inter-Token-Delay-Ms": "60"}
    try:
        running = [asyncio.create_task(post(gw.url, chat("openai-only", True), slow)) for _ in range(2)]
        await asyncio.sleep(0.3)
        status, _, body = await post(gw.url, chat("openai-only", True), {**bearer(WEB_KEY), "X-Request-Id": "third"})
        assert status == 429 and orjson.loads(body)["error"]["param"] == "concurrent"
        assert [result[0] for result in await asyncio.gather(*running)] == [200, 200]
        await asyncio.sleep(0.1)
        assert (await post(gw.url, chat("openai-only", True), bearer(WEB_KEY)))[0] == 200
        assert gw.log_for("third")["ratelimit"]["concurrent"] == {"limit": 2, "remaining": 0}
    finally:
        gw.stop()


async def test_metrics_count_refusals_per_key_and_limit(keyed: Gateway) -> None:
    for _ in range(2):
        await post(keyed.url, headers=bearer(METERED_KEY))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{keyed.url}/metrics") as response:
            text = await response.text()
    assert 'gateway_ratelimited_total{key="metered",limit="rpm"} 1.0' in text
    assert 'gateway_ratelimit_remaining{key="metered",limit="rpm"} 0.0' in text


# --- shared through Redis -------------------------------------------------------------------------

def redis_store(redis: Redis, on_error: str = "open") -> str:
    return textwrap.dedent(f"""
        [store]
        redis_url = "{redis.url}"
        on_error = "{on_error}"
        timeout_ms = 200
        """)


async def test_two_gateways_share_one_rpm_limit_through_redis(
        mock_upstream: Process, redis_server: Redis, tmp_path: Path) -> None:
    tables = key_table("shared", WEB_KEY, "rpm = 6")
    a = gateway_with_keys(mock_upstream, tmp_path / "a", tables, redis_store(redis_server))
    b = gateway_with_keys(mock_upstream, tmp_path / "b", tables, redis_store(redis_server))
    wait_out_a_minute_boundary()
    try:
        statuses = [(await post(gw.url, headers=bearer(WEB_KEY)))[0] for gw in (a, b) * 4]
    finally:
        a.stop()
        b.stop()
    assert statuses == [200] * 6 + [429, 429]


async def test_concurrent_hits_from_two_gateways_never_overshoot_the_limit(
        mock_upstream: Process, redis_server: Redis, tmp_path: Path) -> None:
    tables = key_table("burst", WEB_KEY, "rpm = 10")
    a = gateway_with_keys(mock_upstream, tmp_path / "a", tables, redis_store(redis_server))
    b = gateway_with_keys(mock_upstream, tmp_path / "b", tables, redis_store(redis_server))
    wait_out_a_minute_boundary()
    try:
        results = await asyncio.gather(*(post(gw.url, headers=bearer(WEB_KEY)) for gw in (a, b) * 15))
    finally:
        a.stop()
        b.stop()
    assert [r[0] for r in results].count(200) == 10  # atomic Lua: no read-modify-write race


async def test_redis_killed_mid_test_fails_open_quickly_with_one_store_event(
        mock_upstream: Process, tmp_path: Path) -> None:
    redis = start_redis()
    gw = gateway_with_keys(mock_upstream, tmp_path, key_table("k", WEB_KEY, "rpm = 100"), redis_store(redis, "open"))
    try:
        assert (await post(gw.url, headers=bearer(WEB_KEY)))[0] == 200
        redis.stop()
        started = time.monotonic()
        statuses = [(await post(gw.url, headers=bearer(WEB_KEY)))[0] for _ in range(3)]
        elapsed = time.monotonic() - started
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{gw.url}/readyz") as response:
                ready = response.status, await response.json()
    finally:
        redis.stop()
        gw.stop()
    assert statuses == [200, 200, 200] and elapsed < 5  # each waited at most the 200 ms store timeout
    assert ready[0] == 200 and ready[1]["store"] == {"kind": "redis", "ok": False, "on_error": "open"}
    events = gw.edge_events("store")
    assert len(events) == 1 and events[0]["status"] == "unavailable" and str(redis.port) not in str(events[0])


async def test_redis_down_with_fail_closed_refuses_with_503_and_readyz_says_not_ready(
        mock_upstream: Process, tmp_path: Path) -> None:
    redis = start_redis()
    gw = gateway_with_keys(mock_upstream, tmp_path, key_table("k", WEB_KEY, "rpm = 100"),
                           redis_store(redis, "closed"))
    try:
        redis.stop()
        status, headers, body = await post(gw.url, headers={**bearer(WEB_KEY), "X-Request-Id": "closed"})
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{gw.url}/readyz") as response:
                ready_status = response.status
    finally:
        gw.stop()
    assert status == 503 and orjson.loads(body)["error"]["code"] == "limits_unavailable" and "Retry-After" in headers
    assert ready_status == 503
    line = gw.log_for("closed")
    assert (line["outcome"], line["error_code"]) == ("unavailable", "limits_unavailable")
