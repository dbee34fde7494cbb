"""Fixtures that run the real thing: the mock provider and the gateway as
separate processes on loopback ports they pick themselves (port 0, read back
from their startup line), stopped by PID at the end."""

from __future__ import annotations

import asyncio
import os
import re
import socket
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

from .edge import Nginx, StaticSite, free_port, start_nginx, start_static_site, stop
from .tools import require

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
        stop(self.proc)


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
    """The built-in mock provider, fast by default; tests slow it down per request by header.
    It records what it sees (`--record`), for `Process.mock_records`."""
    tmp = tmp_path_factory.mktemp("mock")
    process = start_process(["mock-upstream", "--host", "127.0.0.1", "--port", "0", "--tokens", "12",
                             "--first-token-delay-ms", "5", "--inter-token-delay-ms", "2", "--record"], tmp,
                            "mock", b"mock provider")
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


async def await_log(path: Path, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """`read_log` for a gateway in this process: waits without blocking its event loop, which hands
    the lines to the log's writer thread (gateway/logsink.py)."""
    deadline = time.monotonic() + timeout
    while len(path.read_bytes().split(b"\n")[:-1]) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return read_log(path, count, timeout=0)


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
        """Lines about the gateway or its connections rather than a request (`store`, `connection_cap`, ...)."""
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
            lines = [line for line in self.log_lines() if line.get("request_id") == request_id]
            if lines or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        time.sleep(0.05)  # a duplicate would land right behind the first
        lines = [line for line in self.log_lines() if line.get("request_id") == request_id]
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


@dataclass
class Redis:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        stop(self.proc)


def start_redis() -> Redis:
    """A real redis-server on a free loopback port, no persistence; stopped by PID."""
    binary = require("redis-server")
    port = free_port()
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return Redis(proc, port)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


@pytest.fixture
def redis_server() -> Iterator[Redis]:
    server = start_redis()
    yield server
    server.stop()


# --- the browser path: nginx, pages on other origins, mocks paced for eyes (tests/edge.py) ---

@pytest.fixture(scope="session")
def paced_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """40 tokens, 50 ms apart: a stream slow enough to watch, sample and stop."""
    process = start_process(["mock-upstream", "--record", "--host", "127.0.0.1", "--port", "0", "--tokens", "40",
                             "--first-token-delay-ms", "50", "--inter-token-delay-ms", "50"],
                            tmp_path_factory.mktemp("paced-mock"), "mock", b"mock provider")
    yield process
    process.stop()


def server_side() -> None:
    """Lower the CPU priority of a server the browser tests talk to. In production the browser does
    not share two cores with the gateway and the provider; here it does, and a renderer starved by
    them would report long tasks that are the scheduler's, not the page's."""
    os.nice(10)


@pytest.fixture(scope="session")
def fast_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """2,000 tokens, 1 ms apart: faster than any screen refreshes."""
    process = start_process(["mock-upstream", "--record", "--host", "127.0.0.1", "--port", "0", "--tokens", "2000",
                             "--first-token-delay-ms", "0", "--inter-token-delay-ms", "1"],
                            tmp_path_factory.mktemp("fast-mock"), "mock", b"mock provider", preexec_fn=server_side)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StaticSite, StaticSite]]:
    """Two plain web servers: pages on the first origin may call the edge gateway, on the second not."""
    tmp = tmp_path_factory.mktemp("sites")
    allowed = start_static_site(tmp / "allowed", tmp / "allowed.log")
    try:
        other = start_static_site(tmp / "other", tmp / "other.log")
    except BaseException:
        allowed.stop()
        raise
    yield allowed, other
    other.stop()
    allowed.stop()


@pytest.fixture(scope="session")
def edge_gateway(paced_mock: Process, fast_mock: Process, sites: tuple[StaticSite, StaticSite],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The gateway the browser and nginx tests use: routes `paced` (the default) and `fast`,
    a 0.5 s heartbeat, nginx on loopback trusted, CORS for the first of `sites` only."""
    text = textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        port = 0
        heartbeat_s = 0.5
        default_route = "paced"
        cors_origins = ["{sites[0].url}"]
        trusted_proxies = ["127.0.0.1"]

        [providers.paced]
        dialect = "openai"
        base_url = "{paced_mock.url}/v1"
        forward_headers = ["x-mock-"]

        [providers.fast]
        dialect = "openai"
        base_url = "{fast_mock.url}/v1"
        forward_headers = ["x-mock-"]

        [routes.paced]
        arms = [{{ name = "paced-arm", provider = "paced", model = "mock-paced", weight = 100 }}]

        [routes.fast]
        arms = [{{ name = "fast-arm", provider = "fast", model = "mock-fast", weight = 100 }}]
        """)
    gw = start_gateway(tmp_path_factory.mktemp("edge-gateway"), text, preexec_fn=server_side)
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def nginx(edge_gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx from nginx/templates/gateway.conf.template in front of the edge gateway: HTTP and TLS + HTTP/2."""
    server = start_nginx(tmp_path_factory.mktemp("nginx"), f"127.0.0.1:{edge_gateway.port}")
    yield server
    server.stop()
