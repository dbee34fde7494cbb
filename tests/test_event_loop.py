"""`gateway serve` runs on uvloop when it is installed (the `fast` extra; the test extra has it)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from gateway.cli import loop_factory

from .conftest import Gateway, Process, config_text, start_gateway


def test_the_gateway_says_it_runs_on_uvloop(gateway: Gateway) -> None:
    assert b"event loop uvloop; open-file limit" in gateway.stderr_path.read_bytes()


def test_gateway_loop_asyncio_keeps_asyncios_own_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LOOP", "asyncio")
    assert loop_factory() is None


def test_gateway_loop_uvloop_asks_for_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LOOP", "uvloop")
    factory = loop_factory()
    assert factory is not None and type(factory()).__module__.startswith("uvloop")


def test_a_misspelt_gateway_loop_is_an_error_not_a_silent_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LOOP", "uvlop")
    with pytest.raises(SystemExit, match="GATEWAY_LOOP must be asyncio or uvloop, not 'uvlop'"):
        loop_factory()


def test_a_gateway_on_asyncios_loop_streams_as_well(mock_upstream: Process, tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, config_text(mock_upstream.url), env={"GATEWAY_LOOP": "asyncio"})
    try:
        assert b"event loop asyncio; open-file limit" in gw.stderr_path.read_bytes()
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
        stream = client.chat.completions.create(model="openai-only", stream=True,
                                                messages=[{"role": "user", "content": "hi"}])
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    finally:
        gw.stop()
