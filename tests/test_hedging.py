"""Hedged first tokens end to end: the real gateway, the mock, the official openai SDK.

The arm's provider forwards the mock's knobs, the fallback does not: a request's
X-Mock-First-Token-Delay-Ms slows the arm alone, and the fallback answers at the
mock's own pace (5 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator

import aiohttp
import openai
import pytest

from gateway.mock import mock_text

from .conftest import Gateway, Process, start_gateway

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gw(mock_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    mock = mock_upstream.url
    text = textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        port = 0

        [providers.slow]
        dialect = "openai"
        base_url = "{mock}/slow/v1"
        forward_headers = ["x-mock-"]
        timeouts = {{ first_token_s = 10, total_s = 20 }}
        retry = {{ attempts = 1 }}

        [providers.quick]
        dialect = "openai"
        base_url = "{mock}/quick/v1"

        [providers.also-slow]
        dialect = "openai"
        base_url = "{mock}/also-slow/v1"
        forward_headers = ["x-mock-"]

        [routes.hedged]
        arms = [{{ name = "only", provider = "slow", model = "slow-model", weight = 100 }}]
        fallback = [{{ provider = "quick", model = "quick-model" }}]
        hedge = {{ after_ms = 150, budget_percent = 100 }}

        [routes.both-slow]
        arms = [{{ name = "only", provider = "slow", model = "slow-model", weight = 100 }}]
        fallback = [{{ provider = "also-slow", model = "quick-model" }}]
        hedge = {{ after_ms = 150, budget_percent = 100 }}

        [routes.stingy]
        arms = [{{ name = "only", provider = "slow", model = "slow-model", weight = 100 }}]
        fallback = [{{ provider = "quick", model = "quick-model" }}]
        hedge = {{ after_ms = 150, budget_percent = 1 }}

        [routes.adaptive]
        arms = [{{ name = "only", provider = "slow", model = "slow-model", weight = 100 }}]
        fallback = [{{ provider = "quick", model = "quick-model" }}]
        hedge = {{ after_ms = "p95", budget_percent = 100, warmup_ms = 150 }}

        [pricing.slow-model]
        input_per_mtok = 10.0
        output_per_mtok = 30.0

        [pricing.quick-model]
        input_per_mtok = 1.0
        output_per_mtok = 2.0
        """)
    gateway = start_gateway(tmp_path_factory.mktemp("hedging"), text)
    yield gateway
    gateway.stop()


def stream(gw: Gateway, route: str, headers: dict[str, str]) -> tuple[str, str, float]:
    """The streamed text, the request id, and the client's time to the first content."""
    request_id = uuid.uuid4().hex
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-test", max_retries=0)
    started, first, text = time.monotonic(), None, ""
    for chunk in client.chat.completions.create(model=route, messages=MESSAGES, stream=True,
                                                extra_headers={**headers, "X-Request-Id": request_id}):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.monotonic() - started
            text += chunk.choices[0].delta.content
    assert first is not None
    return text, request_id, first


def slow(ms: int) -> dict[str, str]:
    return {"X-Mock-First-Token-Delay-Ms": str(ms)}


def metric(gw: Gateway, name: str, **labels: str) -> float:
    body = urllib.request.urlopen(f"{gw.url}/metrics").read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # the exposition sorts labels
    found = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", body, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_slow_first_token_is_hedged_and_the_hedge_serves_one_clean_stream(gw: Gateway) -> None:
    text, request_id, ttft = stream(gw, "hedged", slow(3000))
    assert text == mock_text(12)  # the client saw one stream: the winner's
    assert ttft < 2.0  # the hedge answered, not the 3 s provider (a generous bound)
    line = gw.log_for(request_id)
    assert (line["hedged"], line["hedge_winner"], line["provider"], line["outcome"]) == (True, "quick", "quick", "ok")
    assert [(a["provider"], a["hedge"], a["result"]) for a in line["attempts_detail"]] == [
        ("slow", False, "lost"), ("quick", True, "won")]
    assert line["attempts_detail"][1]["ttft_ms"] >= 150  # started after_ms after the request


def test_the_losers_cost_is_its_prompt_at_its_input_price(gw: Gateway) -> None:
    _, request_id, _ = stream(gw, "hedged", slow(3000))
    line = gw.log_for(request_id)
    assert line["prompt_tokens"] and line["hedge_cost_usd"] == pytest.approx(line["prompt_tokens"] * 10.0 / 1e6)


def test_the_losers_connection_is_closed_not_pooled(gw: Gateway) -> None:
    stream(gw, "hedged", slow(3000))
    deadline = time.monotonic() + 5
    while metric(gw, "gateway_upstream_connections_in_use", provider="slow") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(gw, "gateway_upstream_connections_in_use", provider="slow") == 0


def test_the_mock_sees_the_losers_connection_closed_long_before_its_first_token(
        gw: Gateway, mock_upstream: Process) -> None:
    tag = uuid.uuid4().hex
    started = time.time()
    stream(gw, "hedged", {**slow(3000), "X-Mock-Tag": tag})  # only the arm's provider forwards the tag
    deadline = time.monotonic() + 5
    while not (records := mock_upstream.mock_records(tag)) or records[0]["ended"] is None:
        assert time.monotonic() < deadline, "the loser's request never ended at the mock"
        time.sleep(0.02)
    [loser] = records
    assert loser["outcome"] == "client_closed" and loser["ended"] - started < 2.0  # its first token was 3 s away


async def test_a_client_gone_mid_race_closes_both_attempts_and_logs_one_line(
        gw: Gateway, mock_upstream: Process) -> None:
    tag, request_id = uuid.uuid4().hex, uuid.uuid4().hex
    body = {"model": "both-slow", "messages": MESSAGES, "stream": True}
    async with aiohttp.ClientSession() as session:
        # The status line itself is held until a winner has content, so the client leaves while the
        # request still waits for it: 600 ms in, the hedge (150 ms) and the arm both wait for a token.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.6):
                async with session.post(f"{gw.url}/v1/chat/completions", json=body, headers={
                        **slow(5000), "X-Mock-Tag": tag, "X-Request-Id": request_id}) as response:
                    await response.read()
        closed_at = time.time()
    deadline = time.monotonic() + 5
    while len(records := mock_upstream.mock_records(tag)) < 2 or any(r["ended"] is None for r in records):
        assert time.monotonic() < deadline, f"both attempts should end: {records}"
        await asyncio.sleep(0.02)
    assert [r["outcome"] for r in records] == ["client_closed", "client_closed"]
    assert all(r["ended"] - closed_at < 1.0 for r in records)
    line = gw.log_for(request_id)
    assert (line["outcome"], line["client_disconnected"], line["hedged"]) == ("client_disconnected", True, True)


def test_a_fast_first_token_is_not_hedged(gw: Gateway) -> None:
    _, request_id, _ = stream(gw, "hedged", slow(0))
    line = gw.log_for(request_id)
    assert (line["hedged"], line["hedge_winner"], line["hedge_cost_usd"], line["attempts"]) == (False, None, None, 1)
    assert line["attempts_detail"][0]["result"] == "won"


def test_a_fast_failure_falls_back_at_once_without_a_hedge(gw: Gateway) -> None:
    headers = {"X-Mock-Fault": "status=503", "X-Mock-Scope": "slow"}
    text, request_id, _ = stream(gw, "hedged", headers)
    assert text == mock_text(12)
    line = gw.log_for(request_id)
    assert (line["hedged"], line["provider"], line["fallback_used"]) == (False, "quick", True)
    assert [(a["provider"], a["result"], a["error"]) for a in line["attempts_detail"]] == [
        ("slow", "failed", "upstream_error"), ("quick", "won", None)]


def test_a_spent_budget_waits_as_without_hedging(gw: Gateway) -> None:
    before = metric(gw, "gateway_hedges_total", route="stingy", arm="only", event="budget_exhausted")
    _, request_id, ttft = stream(gw, "stingy", slow(600))  # 1% of one request is no hedge
    line = gw.log_for(request_id)
    assert (line["hedged"], line["hedge_denied"], line["provider"]) == (False, True, "slow")
    assert ttft >= 0.6
    assert metric(gw, "gateway_hedges_total", route="stingy", arm="only", event="budget_exhausted") == before + 1


def test_hedges_started_and_won_are_counted(gw: Gateway) -> None:
    started = metric(gw, "gateway_hedges_total", route="hedged", arm="only", event="started")
    won = metric(gw, "gateway_hedges_total", route="hedged", arm="only", event="won_by_hedge")
    stream(gw, "hedged", slow(3000))
    time.sleep(0.1)
    assert metric(gw, "gateway_hedges_total", route="hedged", arm="only", event="started") == started + 1
    assert metric(gw, "gateway_hedges_total", route="hedged", arm="only", event="won_by_hedge") == won + 1


def test_the_adaptive_delay_hedges_a_first_token_slower_than_the_warmup(gw: Gateway) -> None:
    _, request_id, _ = stream(gw, "adaptive", slow(3000))
    assert gw.log_for(request_id)["hedge_winner"] == "quick"
