"""SIGHUP reloads the config file in every worker, and a stream in flight runs to its end."""

from __future__ import annotations

import signal
import textwrap
import threading
import time
from pathlib import Path

import aiohttp
import openai
import pytest

from gateway.mock import mock_text

from .conftest import Gateway, Process, start_gateway


def config(mock: str, control: int, extra: str = "") -> str:
    return textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        port = 0
        {extra}

        [providers.ctl]
        dialect = "openai"
        base_url = "{mock}/ctl/v1"
        forward_headers = ["x-mock-"]

        [providers.can]
        dialect = "openai"
        base_url = "{mock}/can/v1"
        forward_headers = ["x-mock-"]

        [routes.chat]
        arms = [
          {{ name = "control", provider = "ctl", model = "m", weight = {control} }},
          {{ name = "canary", provider = "can", model = "m", weight = {100 - control} }},
        ]
        """)


def rewrite(gw: Gateway, tmp: Path, text: str) -> None:
    path = tmp / "gateway.toml"
    old = path.read_text()
    head = old[:old.index("[server]")]  # the [log] table start_gateway put in front
    path.write_text(head + text[text.index("[server]"):].replace("[server]", "[server]\ndrain_delay_s = 0", 1))


async def arms_seen(gw: Gateway, users: int) -> set[str]:
    seen = set()
    connector = aiohttp.TCPConnector(force_close=True)  # a new connection each time: every worker answers
    async with aiohttp.ClientSession(connector=connector) as session:
        for n in range(users):
            body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "user": f"u{n}"}
            async with session.post(f"{gw.url}/v1/chat/completions", json=body) as response:
                assert response.status == 200
                seen.add(response.headers["X-Gateway-Arm"])
    return seen


def wait_for(gw: Gateway, text: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while gw.stderr_path.read_text().count(text) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw.stderr_path.read_text().count(text) >= count


@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_reloads_the_weights_in_every_worker_without_dropping_a_stream(
        mock_upstream: Process, tmp_path: Path, workers: int) -> None:
    gw = start_gateway(tmp_path, config(mock_upstream.url, 100), args=("--workers", str(workers)))
    try:
        assert await arms_seen(gw, 20) == {"control"}
        result: dict[str, str] = {}

        def slow_stream() -> None:  # 12 tokens, 150 ms apart: in flight across the reload
            client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-test", max_retries=0)
            chunks = client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hi"}], stream=True, user="u1",
                extra_headers={"X-Mock-Inter-Token-Delay-Ms": "150"})
            result["text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        thread = threading.Thread(target=slow_stream)
        thread.start()
        time.sleep(0.4)
        rewrite(gw, tmp_path, config(mock_upstream.url, 0))
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(gw, "SIGHUP: reloaded", workers)
        assert await arms_seen(gw, 20) == {"canary"}
        thread.join(10)
        assert result["text"] == mock_text(12)  # the stream begun before the reload ran to its end
    finally:
        gw.stop()


async def test_a_reload_that_needs_a_restart_is_refused_whole(mock_upstream: Process, tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, config(mock_upstream.url, 100))
    try:
        rewrite(gw, tmp_path, config(mock_upstream.url, 0, extra="heartbeat_s = 3"))
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(gw, "SIGHUP: reload refused: server changed", 1)
        assert await arms_seen(gw, 10) == {"control"}  # still the old weights
    finally:
        gw.stop()


async def test_a_reload_of_a_broken_file_keeps_serving(mock_upstream: Process, tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, config(mock_upstream.url, 100))
    try:
        rewrite(gw, tmp_path, config(mock_upstream.url, 100).replace("weight = 0", "weight = -5"))
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(gw, "SIGHUP: reload refused", 1)
        assert await arms_seen(gw, 5) == {"control"}
    finally:
        gw.stop()
