"""The connection edge (gateway/edge.py): malformed HTTP, header limits, slow clients, the caps.

Each answer is in the OpenAI error shape and never echoes the client's bytes;
each edge event is a throttled log line, never a traceback. The connection
floods run from helper processes (tests/conn_holder.py), which hold the
sockets and report when and how the gateway ended each one.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.edge import ACCEPT_BURST, OPEN_FILES_CEILING, RESERVED_FDS, connection_cap

from .conftest import ROOT, Gateway, Process, config_text, start_gateway
from .test_observability import markdown_rows

MESSAGES = [{"role": "user", "content": "hi"}]
READ_TIMEOUT_S = 2.0
EDGE_FIELDS = {"schema", "event", "ts", "peer", "status", "error_code", "error_message", "count"}


def edge_config(mock_url: str, server: str) -> str:
    return config_text(mock_url).replace("[server]", "[server]\n" + server, 1)


@pytest.fixture(scope="module")
def gw(mock_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    text = edge_config(mock_upstream.url, f"read_timeout_s = {READ_TIMEOUT_S}\nmax_header_count = 30\n"
                                          "max_streams = 3")
    gateway = start_gateway(tmp_path_factory.mktemp("edge"), text)
    yield gateway
    gateway.stop()


async def exchange(port: int, *parts: bytes, pause_s: float = 0.2, timeout: float = 15.0
                   ) -> tuple[int, dict[str, str], bytes, float]:
    """Send `parts` (pausing between them) on a new connection and read until the gateway closes it:
    the status, headers, body, and the seconds from connecting to the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    try:
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(pause_s)
            writer.write(part)
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    elapsed = time.monotonic() - began
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split(" ")[1]), headers, body, elapsed


def assert_openai_error(body: bytes, code: str) -> dict[str, Any]:
    error = orjson.loads(body)
    assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "code", "param"}
    assert error["error"]["code"] == code
    return error["error"]


def wait_for_lines(gw: Gateway, event: str, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(lines := gw.edge_events(event)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return lines


# --- malformed HTTP and header limits ----------------------------------------------------------

HEADERS_31 = b"".join(b"X-H-%d: v\r\n" % i for i in range(31))
MALFORMED = [
    # id, raw request, status, code, bytes of the request that must not come back
    ("nul-in-request-line", b"GET\x00 / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_http", b"\x00"),
    ("bad-header-token", b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400, "bad_http", b"Bad Header"),
    ("not-http", b"HELLO-PROBE\r\n\r\n", 400, "bad_http", b"HELLO-PROBE"),
    ("bad-chunk-size", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"zz-probe\r\n", 400, "bad_http", b"zz-probe"),
    ("header-line-too-long", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"q" * 9000 + b"\r\n\r\n", 431,
     "headers_too_large", b"qqqqqqqq"),
    ("too-many-headers", b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + HEADERS_31 + b"\r\n", 431, "headers_too_large",
     b"X-H-"),
]


@pytest.mark.parametrize(("raw", "status", "code", "secret"), [case[1:] for case in MALFORMED],
                         ids=[case[0] for case in MALFORMED])
async def test_malformed_http_gets_an_openai_shaped_error_that_echoes_none_of_it(
        gw: Gateway, raw: bytes, status: int, code: str, secret: bytes) -> None:
    got, headers, body, _ = await exchange(gw.port, raw)
    assert got == status
    assert headers["content-type"].startswith("application/json")
    assert_openai_error(body, code)
    assert secret not in body


async def test_a_malformed_request_is_one_edge_event_line_not_a_traceback(gw: Gateway) -> None:
    await exchange(gw.port, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    [first, *_] = wait_for_lines(gw, "bad_http")
    assert set(first) == EDGE_FIELDS and first["count"] == 1 and first["status"] in (400, 431)
    assert b"Traceback" not in gw.stderr_path.read_bytes()


async def test_a_flood_of_malformed_requests_is_a_few_lines_that_count_them(mock_upstream: Process,
                                                                            tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, config_text(mock_upstream.url))
    try:
        for _ in range(10):
            await asyncio.gather(*(exchange(gw.port, b"NOT HTTP AT ALL\r\n\r\n") for _ in range(30)))
    finally:
        gw.stop()
    lines = gw.edge_events("bad_http")
    print(f"\n300 malformed requests: {len(lines)} log lines, counts {[line['count'] for line in lines]}, "
          f"stderr {gw.stderr_path.stat().st_size} bytes")
    assert sum(line["count"] for line in lines) == 300
    assert len(lines) <= 3  # the first at once, then one per 10 s interval (and one at shutdown)
    assert b"Traceback" not in gw.stderr_path.read_bytes()
    assert gw.stderr_path.stat().st_size < 2000


async def test_a_malformed_body_fails_its_request_with_a_400_in_its_own_log_line(gw: Gateway) -> None:
    rid = uuid.uuid4().hex
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: {rid}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    status, _, body, _ = await exchange(gw.port, head, b"zz\r\n")
    assert status == 400
    assert "Malformed request body" in assert_openai_error(body, "bad_http")["message"]
    line = gw.log_for(rid)
    assert (line["status"], line["outcome"], line["error_code"]) == (400, "client_error", "bad_http")


# --- the read timeout ----------------------------------------------------------------------------

async def test_a_body_that_stops_arriving_is_a_408_after_the_read_timeout(gw: Gateway) -> None:
    rid = uuid.uuid4().hex
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: {rid}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n").encode()
    status, _, body, elapsed = await exchange(gw.port, head, b'{"model": ')
    assert status == 408
    assert_openai_error(body, "request_timeout")
    assert READ_TIMEOUT_S <= elapsed < READ_TIMEOUT_S + 3
    line = gw.log_for(rid)
    assert (line["status"], line["outcome"], line["error_code"]) == (408, "client_error", "request_timeout")


async def test_a_head_that_never_ends_is_a_408_and_closed_after_the_read_timeout(gw: Gateway) -> None:
    status, headers, body, elapsed = await exchange(gw.port, b"POST /v1/chat/completions HTTP/1.1\r\nHo")
    assert (status, headers["connection"]) == (408, "close")
    assert_openai_error(body, "request_timeout")
    assert READ_TIMEOUT_S <= elapsed < READ_TIMEOUT_S + 3
    [line, *_] = wait_for_lines(gw, "read_timeout")
    assert set(line) == EDGE_FIELDS and line["error_code"] == "request_timeout"


async def test_an_idle_keep_alive_connection_outlives_the_read_timeout(gw: Gateway) -> None:
    # The read timeout is for a request under way; between requests the longer keepalive_s applies.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        for pause_s in (READ_TIMEOUT_S + 0.5, 0):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            await asyncio.sleep(pause_s)
    finally:
        writer.close()


# --- max_streams -------------------------------------------------------------------------------

async def test_over_max_streams_a_request_is_a_429_with_retry_after_and_its_log_line(gw: Gateway) -> None:
    slow = {"X-Mock-Tokens": "50", "X-Mock-Inter-Token-Delay-Ms": "50"}
    body = {"model": "openai-only", "messages": MESSAGES, "stream": True}
    async with aiohttp.ClientSession() as session:
        open_streams = [await session.post(f"{gw.url}/v1/chat/completions", json=body, headers=slow)
                        for _ in range(3)]
        rid = uuid.uuid4().hex
        async with session.post(f"{gw.url}/v1/chat/completions", json=body,
                                headers={"X-Request-Id": rid}) as refused:
            assert (refused.status, refused.headers["Retry-After"]) == (429, "1")
            assert_openai_error(await refused.read(), "too_many_streams")
        for response in open_streams:
            response.close()
    line = gw.log_for(rid)
    assert (line["status"], line["outcome"], line["error_code"]) == (429, "overloaded", "too_many_streams")


# --- slowloris and the connection cap ------------------------------------------------------------

class Holders:
    """conn_holder.py processes: each holds its share of the connections and reports on them."""

    def __init__(self, port: int, count: int, *, processes: int = 1, args: tuple[str, ...] = ()) -> None:
        share = count // processes
        self.procs = [subprocess.Popen([sys.executable, "-m", "tests.conn_holder", str(port), str(share), *args],
                                       cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(processes)]

    def connected(self) -> list[dict[str, Any]]:
        return [json.loads(proc.stdout.readline()) for proc in self.procs if proc.stdout]

    def summaries(self, timeout: float = 120) -> list[dict[str, Any]]:
        out = []
        for proc in self.procs:
            stdout, _ = proc.communicate(timeout=timeout)
            out.append(json.loads(stdout.splitlines()[-1]))
        return out

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def ended(summaries: list[dict[str, Any]], kind: str) -> tuple[int, float, float]:
    """How many connections the gateway ended this way, and the soonest and latest (seconds)."""
    parts = [s["ended"][kind] for s in summaries if kind in s["ended"]]
    if not parts:
        return 0, 0.0, 0.0
    return sum(p["count"] for p in parts), min(p["min_s"] for p in parts), max(p["max_s"] for p in parts)


async def timed_requests(url: str, until: float) -> list[float]:
    """Ordinary requests, one after another until `until`: how long each took."""
    times = []
    body = {"model": "openai-only", "messages": MESSAGES}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while time.monotonic() < until:
            for method, path, payload in [("GET", "/healthz", None), ("POST", "/v1/chat/completions", body),
                                          ("POST", "/v1/chat/completions", {**body, "stream": True})]:
                began = time.monotonic()
                async with session.request(method, f"{url}{path}", json=payload) as response:
                    await response.read()
                    assert response.status == 200
                times.append(time.monotonic() - began)
    return times


async def test_500_slowloris_connections_are_closed_by_the_read_timeout_while_requests_are_served(
        mock_upstream: Process, tmp_path: Path) -> None:
    timeout_s = 4.0
    gw = start_gateway(tmp_path, edge_config(mock_upstream.url, f"read_timeout_s = {timeout_s}"))
    holders = Holders(gw.port, 500, args=("--trickle", "--watch-s", str(timeout_s + 6)))
    try:
        [connected] = holders.connected()
        assert connected["connected"] == 500
        times = await timed_requests(gw.url, until=time.monotonic() + timeout_s - 1)
        [summary] = holders.summaries()
        during = len(gw.edge_events("read_timeout"))
    finally:
        holders.kill()
        gw.stop()
    closed, soonest, latest = ended([summary], "408")
    times.sort()
    print(f"\nslowloris: 500 connections trickling a header byte a second; {closed} closed by the read timeout "
          f"({timeout_s:g}s) {soonest:.2f}-{latest:.2f}s after connecting; meanwhile {len(times)} requests, "
          f"median {1000 * times[len(times) // 2]:.0f} ms, max {1000 * times[-1]:.0f} ms; "
          f"{during} read_timeout log lines")
    assert summary["still_open"] == 0 and closed == 500
    assert timeout_s - 0.1 <= soonest and latest < timeout_s + 3  # (the holder notes a connect a bit late)
    assert times and times[-1] < 1.0
    assert during <= 2
    assert sum(line["count"] for line in gw.edge_events("read_timeout")) == 500
    assert b"Traceback" not in gw.stderr_path.read_bytes()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def watch_health(gw: Gateway, holders: Holders) -> tuple[list[int], list[float], int]:
    """While the holders run: /healthz statuses and latencies, and the gateway's most open files."""
    statuses, latencies, most_fds = [], [], 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while any(proc.poll() is None for proc in holders.procs):
            began = time.monotonic()
            async with session.get(f"{gw.url}/healthz", headers={"Connection": "close"}) as response:
                statuses.append(response.status)
            latencies.append(time.monotonic() - began)
            most_fds = max(most_fds, open_fds(gw.proc.pid))
            await asyncio.sleep(0.25)
    return statuses, latencies, most_fds


async def test_20000_connections_hit_the_cap_which_logs_a_line_not_a_flood(mock_upstream: Process,
                                                                          tmp_path: Path) -> None:
    # One process holds at most its open-file limit (20,000 here) of sockets beside its own files,
    # so two holders share the 20,000 connections.
    cap, timeout_s = 1000, 3.0
    gw = start_gateway(tmp_path, edge_config(mock_upstream.url, f"max_connections = {cap}\n"
                                                                f"read_timeout_s = {timeout_s}"))
    began = time.monotonic()
    holders = Holders(gw.port, 20_000, processes=2, args=("--watch-s", str(timeout_s + 3)))
    try:
        statuses, latencies, most_fds = await watch_health(gw, holders)
        summaries = holders.summaries()
        flood_s = time.monotonic() - began
        cap_lines_during = len(gw.edge_events("connection_cap"))
    finally:
        holders.kill()
        gw.stop()
    refused, _, _ = ended(summaries, "503")
    timed_out, _, _ = ended(summaries, "408")
    cap_lines = gw.edge_events("connection_cap")
    print(f"\n20,000 connections in {flood_s:.1f}s against a cap of {cap}: {refused} got the cap's 503, "
          f"{timed_out} the read timeout's 408; gateway open files at most {most_fds}; "
          f"/healthz {len(statuses)} times, statuses {sorted(set(statuses))}, slowest {1000 * max(latencies):.0f} ms; "
          f"connection_cap lines during the flood: {cap_lines_during}")
    assert sum(s["still_open"] for s in summaries) == 0 and refused + timed_out == 20_000
    assert refused >= 20_000 - 2 * cap * (1 + flood_s / timeout_s)
    assert most_fds <= cap + ACCEPT_BURST + RESERVED_FDS
    # Stalled connections do not starve the others. (A SYN dropped at a full listen queue costs a
    # 1 s retry, a second one 2 s more: the kernel's, before the gateway sees the connection.)
    assert set(statuses) == {200} and max(latencies) < 4.0
    assert cap_lines_during <= 2 + flood_s / 10  # the first at once, then one per 10 s interval at most
    assert sum(line["count"] for line in cap_lines) == refused
    stderr = gw.stderr_path.read_bytes()
    assert b"Traceback" not in stderr and b"Too many open files" not in stderr


def unprivileged() -> None:
    """In the child before exec: drop CAP_SYS_RESOURCE from the capability bounding set, so the
    gateway cannot raise its hard open-file limit even as root (where it may, it does)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(24, 24, 0, 0, 0)  # PR_CAPBSET_DROP, CAP_SYS_RESOURCE


def may_raise_hard_limits() -> bool:
    effective = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("CapEff"))
    return bool(int(effective.split()[1], 16) >> 24 & 1)  # CAP_SYS_RESOURCE


def limit_open_files_to_1024() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    unprivileged()


async def test_the_cap_is_lowered_to_fit_the_open_file_limit_and_engages_before_it(mock_upstream: Process,
                                                                                   tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, config_text(mock_upstream.url), preexec_fn=limit_open_files_to_1024)
    expected = connection_cap(10_000, 1024, 4 * 100)  # the test config's four providers, 100 connections each
    holders = Holders(gw.port, 2000, args=("--watch-s", "1"))
    try:
        statuses, _, most_fds = await watch_health(gw, holders)
        summaries = holders.summaries()
    finally:
        holders.kill()
        gw.stop()
    stderr = gw.stderr_path.read_bytes()
    print(f"\nopen-file limit 1024: cap {expected}, 2000 connections, gateway open files at most {most_fds}")
    assert f"at most {expected} client connections (server.max_connections 10000 does not fit".encode() in stderr
    assert most_fds < 1024
    assert ended(summaries, "503")[0] >= 2000 - expected - 2 * ACCEPT_BURST
    assert set(statuses) == {200}
    assert b"Too many open files" not in stderr and b"Traceback" not in stderr


def test_serve_raises_its_soft_open_file_limit_to_the_hard_limit_and_says_so(mock_upstream: Process,
                                                                            tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    def soft_512() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
        unprivileged()

    gw = start_gateway(tmp_path, config_text(mock_upstream.url), preexec_fn=soft_512)
    gw.stop()
    assert f"open-file limit {hard} (raised from 512)".encode() in gw.stderr_path.read_bytes()


def test_serve_raises_its_hard_open_file_limit_exactly_where_it_may(mock_upstream: Process, tmp_path: Path) -> None:
    # Both ways are specified: where this runs with CAP_SYS_RESOURCE, the hard limit goes up; where
    # not (this development machine), the limit stays and the startup line says so, no error.
    gw = start_gateway(tmp_path, config_text(mock_upstream.url), preexec_fn=lambda: resource.setrlimit(
        resource.RLIMIT_NOFILE, (1024, 1024)))
    gw.stop()
    if may_raise_hard_limits():
        top = min(OPEN_FILES_CEILING, int(Path("/proc/sys/fs/nr_open").read_text()))
        assert f"open-file limit {top} (raised from 1024); at most 10000 client connections\n".encode() \
            in gw.stderr_path.read_bytes()
    else:
        assert b"open-file limit 1024; at most " in gw.stderr_path.read_bytes()


class FakeLimits:
    """RLIMIT_NOFILE as the kernel keeps it: raising the hard limit needs the privilege."""

    def __init__(self, soft: int, hard: int, privileged: bool) -> None:
        self.soft, self.hard, self.privileged = soft, hard, privileged

    def getrlimit(self, which: int) -> tuple[int, int]:
        return self.soft, self.hard

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        soft, hard = limits
        if hard > self.hard and not self.privileged:
            raise ValueError("not allowed to raise maximum limit")
        if soft > hard:
            raise ValueError("current limit exceeds maximum limit")
        self.soft, self.hard = soft, hard


@pytest.mark.parametrize(("privileged", "nr_open", "expected"), [
    (False, 1 << 20, (20_000, (20_000, 20_000))),  # the soft limit up to the hard one, no further
    (True, 1 << 20, (1 << 20, (1 << 20, 1 << 20))),  # both, up to the ceiling
    (True, 50_000, (50_000, (50_000, 50_000))),  # both, up to the kernel's fs.nr_open
    (True, 10_000, (20_000, (20_000, 20_000))),  # fs.nr_open under the hard limit: the soft limit only
])
def test_the_hard_open_file_limit_is_raised_only_with_the_privilege(
        monkeypatch: pytest.MonkeyPatch, privileged: bool, nr_open: int, expected: tuple[int, tuple[int, int]]) -> None:
    from gateway import edge

    limits = FakeLimits(1024, 20_000, privileged)
    monkeypatch.setattr(edge.resource, "getrlimit", limits.getrlimit)
    monkeypatch.setattr(edge.resource, "setrlimit", limits.setrlimit)
    monkeypatch.setattr(edge, "_kernel_open_files_max", lambda fallback: nr_open)
    after, in_force = expected
    assert edge.raise_open_file_limit() == (1024, after)
    assert (limits.soft, limits.hard) == in_force


async def test_an_accept_that_fails_for_want_of_files_is_a_throttled_line_not_a_traceback() -> None:
    from gateway.cli import _quiet_accept_errors
    from gateway.edge_events import EdgeEvents

    lines: list[tuple[str, Any]] = []
    handle = _quiet_accept_errors(EdgeEvents(lambda kind, fields: lines.append((kind, dict(fields)))))
    for _ in range(128):  # what asyncio reports in one loop turn when accept() hits EMFILE
        handle(asyncio.get_running_loop(), {"message": "socket.accept() out of system resource",
                                            "exception": OSError(errno.EMFILE, "Too many open files")})
    assert lines == [("accept_failed", {"peer": None, "status": None, "error_code": "EMFILE",
                                        "error_message": "Too many open files", "count": 1})]


def test_edge_event_fields_are_the_documented_ones() -> None:
    assert {row[0] for row in markdown_rows("## Edge events")} == EDGE_FIELDS
