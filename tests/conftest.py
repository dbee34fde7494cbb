"""Fixtures that run the real thing: the mock provider and the gateway as
separate processes on loopback ports they pick themselves (port 0, read back
from their startup line), stopped by PID at the end."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    port: int
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mock_records(self, tag: str) -> list[dict[str, Any]]:
        """What the mock provider saw of the requests carrying `X-Mock-Tag: tag`, in order."""
        with urllib.request.urlopen(f"{self.url}/_mock/requests") as response:
            return [r for r in orjson.loads(response.read()) if r["headers"].get("x-mock-tag") == tag]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_process(args: list[str], tmp: Path, name: str, ready: bytes, env: dict[str, str] | None = None,
                  preexec_fn: Callable[[], object] | None = None) -> Process:
    """Start `python -m gateway ARGS` and wait for its startup line `READY on http://127.0.0.1:PORT`."""
    stderr_path = tmp / f"{name}.stderr"
    pattern = re.compile(re.escape(ready) + rb" on http://127\.0\.0\.1:(\d+)")
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=stderr, env={**os.environ, **(env or {})}, preexec_fn=preexec_fn)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = stderr_path.read_bytes()
        if match := pattern.search(text):
            return Process(proc, int(match.group(1)), stderr_path)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {text.decode(errors='replace')}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{name} did not start: {stderr_path.read_text(errors='replace')}")


@pytest.fixture(scope="session")
def mock_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """The built-in mock provider, fast by default; tests slow it down per request by header."""
    tmp = tmp_path_factory.mktemp("mock")
    process = start_process(["mock-upstream", "--host", "127.0.0.1", "--port", "0", "--tokens", "12",
                             "--first-token-delay-ms", "5", "--inter-token-delay-ms", "2"], tmp, "mock",
                            b"mock provider")
    yield process
    process.stop()


def config_text(mock_url: str, extra: str = "", *, dead_url: str = "http://127.0.0.1:9") -> str:
    """A config whose providers are the mock (and one dead endpoint for fallback tests)."""
    return textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        port = 0
        heartbeat_s = 15
        allow_arm_override = true

        [providers.oa]
        dialect = "openai"
        base_url = "{mock_url}/oa/v1"
        forward_headers = ["x-mock-"]
        retry = {{ attempts = 2, backoff_base_ms = 10, backoff_cap_ms = 100 }}

        [providers.an]
        dialect = "anthropic"
        base_url = "{mock_url}/an"
        forward_headers = ["x-mock-"]
        retry = {{ attempts = 2, backoff_base_ms = 10, backoff_cap_ms = 100 }}

        [providers.cheap]
        dialect = "openai"
        base_url = "{mock_url}/cheap/v1"
        forward_headers = ["x-mock-"]

        [providers.dead]
        dialect = "openai"
        base_url = "{dead_url}/v1"
        retry = {{ attempts = 2, backoff_base_ms = 10, backoff_cap_ms = 100 }}

        [routes.openai-only]
        arms = [{{ name = "only", provider = "oa", model = "gpt-mock", weight = 100 }}]

        [routes.anthropic-only]
        arms = [{{ name = "only", provider = "an", model = "claude-mock", weight = 100 }}]

        [routes.chat]
        salt = "test-salt"
        arms = [
          {{ name = "control", provider = "oa", model = "gpt-mock", weight = 90 }},
          {{ name = "canary", provider = "an", model = "claude-mock", weight = 10 }},
        ]
        fallback = [{{ provider = "cheap", model = "cheap-mock" }}]

        [routes.dead-first]
        arms = [{{ name = "only", provider = "dead", model = "gpt-mock", weight = 100 }}]
        fallback = [{{ provider = "cheap", model = "cheap-mock" }}]

        [pricing.gpt-mock]
        input_per_mtok = 2.5
        output_per_mtok = 10.0

        [pricing.claude-mock]
        input_per_mtok = 3.0
        output_per_mtok = 15.0

        [pricing.cheap-mock]
        input_per_mtok = 0.28
        output_per_mtok = 0.42
        """) + textwrap.dedent(extra)


def read_log(path: Path, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Wait until `path` holds `count` complete log lines (the writer is a thread), then parse them."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_bytes().split(b"\n")[:-1]
        if len(lines) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(lines) == count, f"expected {count} log lines, found {len(lines)}"
    return [orjson.loads(line) for line in lines]


@dataclass
class Gateway(Process):
    log_path: Path = field(default=Path())

    def log_lines(self) -> list[dict[str, Any]]:
        """The request lines (not the edge events: see `edge_events`)."""
        return [line for line in self.all_log_lines() if line["event"] == "request"]

    def edge_events(self, event: str | None = None) -> list[dict[str, Any]]:
        return [line for line in self.all_log_lines() if line["event"] != "request"
                and (event is None or line["event"] == event)]

    def all_log_lines(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        # The gateway may be writing a line right now: only complete (newline-ended) lines count.
        complete = self.log_path.read_bytes().split(b"\n")[:-1]
        return [orjson.loads(line) for line in complete if line.strip()]

    def log_for(self, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The one log line of a request; fails if there is none or more than one."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log_lines() if line["request_id"] == request_id]
            if lines or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        time.sleep(0.05)  # a duplicate would land right behind the first
        lines = [line for line in self.log_lines() if line["request_id"] == request_id]
        assert len(lines) == 1, f"expected one log line for {request_id}, got {lines}"
        return lines[0]


def start_gateway(tmp: Path, text: str, env: dict[str, str] | None = None, log_path: Path | None = None,
                  args: tuple[str, ...] = (), preexec_fn: Callable[[], object] | None = None) -> Gateway:
    log_path = log_path or tmp / "requests.log"
    text = text.replace("[server]", f'[log]\npath = "{log_path}"\n\n[server]', 1)
    if "drain_delay_s" not in text:  # a balancer's grace period; tests stop gateways all the time
        text = text.replace("[server]", "[server]\ndrain_delay_s = 0", 1)
    config = tmp / "gateway.toml"
    config.write_text(text)
    process = start_process(["serve", "--config", str(config), *args], tmp, "gateway", b"gateway listening", env,
                            preexec_fn)
    return Gateway(process.proc, process.port, process.stderr_path, log_path)


@pytest.fixture(scope="session")
def gateway(mock_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(tmp_path_factory.mktemp("gateway"), config_text(mock_upstream.url))
    yield gw
    gw.stop()


@pytest.fixture
def request_id() -> str:
    return f"test-{uuid.uuid4().hex}"
