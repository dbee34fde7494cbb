"""A broken upstream, through the real gateway: bytes that are not SSE, `data:` that is not
JSON, a line that never ends, headers then silence, a name that does not resolve, a TLS
handshake that fails. Each gives the client a defined error and one log line, and the
gateway serves the next request as if nothing happened.

Before the first token the failure is invisible: retried, then the fallback, else an
OpenAI-shaped error with its status. After it, the stream ends with an error event.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.mock import mock_text
from gateway.sse import Event, SSEParser

from .conftest import Gateway, Process, start_gateway

MESSAGES = [{"role": "user", "content": "hi"}]
MAX_EVENT_BYTES = 1 << 20
ENDLESS = f"endless_bytes={64 << 20}"  # 64 MiB with no line ending, against a 1 MiB limit
# Generous, so a loaded machine never turns a fault into a timeout; the stall providers wait less.
TIMEOUTS = "timeouts = { connect_s = 5, first_token_s = 5, idle_s = 5, total_s = 20 }"
STALL_TIMEOUTS = "timeouts = { connect_s = 5, first_token_s = 0.5, idle_s = 5, total_s = 20 }"
RETRY = "retry = { attempts = 2, backoff_base_ms = 10, backoff_cap_ms = 50 }"
CHAT = "/v1/chat/completions"
STREAM = "/v1/stream/chat"


# --- the places a provider can be broken -----------------------------------------------------

@pytest.fixture(scope="module")
def untrusted_tls_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A local TLS server with a self-signed certificate the gateway does not trust."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    tmp = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")],
                   check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                context.wrap_socket(conn, server_side=True).close()  # the client refuses the certificate
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


@pytest.fixture(scope="module")
def gw(mock_upstream: Process, untrusted_tls_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("faults"), gateway_config(mock_upstream, untrusted_tls_port))
    yield gateway
    gateway.stop()


def gateway_config(mock_upstream: Process, untrusted_tls_port: int) -> str:
    mock = mock_upstream.url
    unreachable = {
        "dns": "http://provider.invalid/v1",  # RFC 2606: never resolves, and fails without any network
        "tls-plain": f"https://127.0.0.1:{mock_upstream.port}/v1",  # TLS spoken to a plain-HTTP port
        "tls-untrusted": f"https://127.0.0.1:{untrusted_tls_port}/v1",
    }
    text = textwrap.dedent(f"""
        [server]
        host = "127.0.0.1"
        port = 0
        max_event_bytes = {MAX_EVENT_BYTES}

        [providers.cheap]
        dialect = "openai"
        base_url = "{mock}/cheap/v1"
        forward_headers = ["x-mock-"]
        """)
    mocked = {"oa": ("openai", f"{mock}/oa/v1", TIMEOUTS), "an": ("anthropic", f"{mock}/an", TIMEOUTS),
              "oa-stall": ("openai", f"{mock}/oa-stall/v1", STALL_TIMEOUTS),
              "an-stall": ("anthropic", f"{mock}/an-stall", STALL_TIMEOUTS)}
    for name, (dialect, url, timeouts) in mocked.items():
        text += (f'\n[providers.{name}]\ndialect = "{dialect}"\nbase_url = "{url}"\nforward_headers = ["x-mock-"]\n'
                 f"{timeouts}\n{RETRY}\n")
    for name, url in unreachable.items():
        text += f'\n[providers.{name}]\ndialect = "openai"\nbase_url = "{url}"\n{TIMEOUTS}\n{RETRY}\n'
    for name in (*mocked, *unreachable):
        arms = f'arms = [{{ name = "only", provider = "{name}", model = "m", weight = 100 }}]'
        text += f"\n[routes.{name}]\n{arms}\n"
        text += f'\n[routes.{name}-fb]\n{arms}\nfallback = [{{ provider = "cheap", model = "m" }}]\n'
    return text


# --- talking to the gateway ---------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    events: list[Event]  # a stream's events (empty for a JSON answer)
    error: dict[str, Any] | None  # the error object: a JSON answer's, or the stream's last event's
    text: str  # the model output the client received
    log: dict[str, Any]  # the request's one log line


def body_for(path: str, route: str, stream: bool) -> dict[str, Any]:
    if path == CHAT:
        return {"model": route, "messages": MESSAGES, "stream": stream}
    return {"model": route, "prompt": "hi"}


async def ask(gw: Gateway, path: str, route: str, headers: dict[str, str] | None = None, *,
              stream: bool = True, log: bool = True) -> Answer:
    rid = uuid.uuid4().hex
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.url}{path}", json=body_for(path, route, stream),
                                headers={"X-Request-Id": rid, **(headers or {})}) as response:
            raw = await response.read()
            status, content_type = response.status, response.content_type
    line = gw.log_for(rid) if log else {}
    if content_type != "text/event-stream":
        return Answer(status, [], orjson.loads(raw).get("error"), "", line)
    events = SSEParser().feed(raw)
    datas = [orjson.loads(e.data) for e in events if e.data != "[DONE]"]
    error = datas[-1].get("error") if datas else None
    if path == CHAT:
        text = "".join(d["choices"][0]["delta"].get("content") or "" for d in datas if d.get("choices"))
    else:
        text = "".join(d.get("token", "") for d in datas)
    return Answer(status, events, error, text, line)


def fault(spec: str) -> dict[str, str]:
    """A fault on the arms' own providers, never on the fallback; the tag finds the mock's records."""
    return {"X-Mock-Fault": spec, "X-Mock-Scope": "oa,an,oa-stall,an-stall", "X-Mock-Tag": uuid.uuid4().hex}


async def assert_still_serves(gw: Gateway, path: str = CHAT, route: str = "oa") -> None:
    """The worker is healthy: alive, serving a normal stream, holding no upstream connection."""
    assert gw.proc.poll() is None
    answer = await ask(gw, path, route, log=False)
    assert (answer.status, answer.text) == (200, mock_text(12))
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 5
        while True:  # a lease ends just after the response does
            async with session.get(f"{gw.url}/metrics") as response:
                held = [line for line in (await response.text()).splitlines()
                        if line.startswith("gateway_upstream_connections_in_use{") and not line.endswith(" 0.0")]
            if not held or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
    assert held == [], "upstream connections still held after the fault"


# --- before the first token: invisible, retried, then the fallback or an error ----------------------

BEFORE = [
    # id, X-Mock-Fault, what the error message says
    ("non-sse-bytes", "garbage_after=0", "broke the event stream: a line is neither a comment nor a field"),
    ("proxy-html-page", "garbage_after=0;content_type=text/html", "answered 200 with text/html, not "
                                                                  "text/event-stream"),
    ("invalid-json", "bad_json_after=0", "sent an event that is not JSON"),
    ("endless-line", f"endless_after=0;{ENDLESS}", f"an incomplete event exceeds {MAX_EVENT_BYTES} bytes"),
]
ENDPOINTS = pytest.mark.parametrize("path", [CHAT, STREAM], ids=["chat_completions", "stream_chat"])
DIALECTS = pytest.mark.parametrize("provider", ["oa", "an"], ids=["openai", "anthropic"])


@pytest.mark.parametrize(("spec", "says"), [case[1:] for case in BEFORE], ids=[case[0] for case in BEFORE])
@DIALECTS
@ENDPOINTS
async def test_a_broken_stream_before_the_first_token_is_retried_then_a_502(
        gw: Gateway, mock_upstream: Process, path: str, provider: str, spec: str, says: str) -> None:
    headers = fault(spec)
    answer = await ask(gw, path, provider, headers)
    assert answer.status == 502 and answer.error is not None
    assert (answer.error["code"], answer.error["type"]) == ("upstream_error", "api_error")
    assert says in answer.error["message"]
    line = answer.log
    assert (line["status"], line["outcome"], line["error_code"]) == (502, "upstream_error", "upstream_error")
    assert line["attempt_errors"] == [f"{provider}:upstream_error"] * 2
    assert len(mock_upstream.mock_records(headers["X-Mock-Tag"])) == 2
    await assert_still_serves(gw, path, provider)


@pytest.mark.parametrize("spec", [case[1] for case in BEFORE], ids=[case[0] for case in BEFORE])
@DIALECTS
async def test_a_broken_stream_before_the_first_token_falls_back_unseen(gw: Gateway, provider: str,
                                                                        spec: str) -> None:
    answer = await ask(gw, CHAT, f"{provider}-fb", fault(spec))
    assert (answer.status, answer.text) == (200, mock_text(12))
    line = answer.log
    assert (line["outcome"], line["error_code"], line["provider"], line["fallback_used"]) == ("ok", None, "cheap",
                                                                                              True)
    assert line["attempt_errors"] == [f"{provider}:upstream_error"] * 2
    await assert_still_serves(gw, CHAT, provider)


# The wait is the same on every endpoint and dialect: two of them cover all four.
@pytest.mark.parametrize(("path", "provider"), [(CHAT, "oa"), (STREAM, "an")],
                         ids=["chat_completions-openai", "stream_chat-anthropic"])
async def test_headers_then_silence_is_a_first_token_timeout_after_the_retries(
        gw: Gateway, path: str, provider: str) -> None:
    answer = await ask(gw, path, f"{provider}-stall", fault("stall=first"))
    assert answer.status == 504 and answer.error is not None and answer.error["code"] == "timeout_first_token"
    line = answer.log
    assert (line["status"], line["outcome"], line["error_code"]) == (504, "timeout_first_token",
                                                                     "timeout_first_token")
    assert line["attempt_errors"] == [f"{provider}-stall:timeout_first_token"] * 2
    await assert_still_serves(gw, path, provider)


# --- after the first token: never retried, the stream ends with an error event ----------------------

AFTER = [
    ("non-sse-bytes", "garbage_after=3", "broke the event stream: a line is neither a comment nor a field"),
    ("invalid-json", "bad_json_after=3", "sent an event that is not JSON"),
    ("endless-line", f"endless_after=3;{ENDLESS}", f"an incomplete event exceeds {MAX_EVENT_BYTES} bytes"),
]


@pytest.mark.parametrize(("spec", "says"), [case[1:] for case in AFTER], ids=[case[0] for case in AFTER])
@DIALECTS
@ENDPOINTS
async def test_a_stream_broken_after_the_first_token_ends_with_an_error_event(
        gw: Gateway, mock_upstream: Process, path: str, provider: str, spec: str, says: str) -> None:
    headers = fault(spec)
    answer = await ask(gw, path, provider, headers)
    assert (answer.status, answer.text) == (200, mock_text(3))
    assert answer.error is not None and answer.error["code"] == "upstream_error" and says in answer.error["message"]
    assert answer.events[-1].event == ("error" if path == STREAM else "message")
    assert all(e.data != "[DONE]" and e.event != "done" for e in answer.events)
    line = answer.log
    assert (line["status"], line["outcome"], line["error_code"]) == (200, "upstream_error", "upstream_error")
    assert (line["attempts"], line["completion_tokens"]) == (1, 3)
    [record] = mock_upstream.mock_records(headers["X-Mock-Tag"])  # never retried
    await assert_still_serves(gw, path, provider)


async def test_the_gateway_hangs_up_on_an_endless_line_long_before_its_end(gw: Gateway,
                                                                            mock_upstream: Process) -> None:
    headers = fault(f"endless_after=3;{ENDLESS}")
    await ask(gw, STREAM, "oa", headers)
    deadline = time.monotonic() + 5
    while (record := mock_upstream.mock_records(headers["X-Mock-Tag"])[0])["ended"] is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert record["outcome"] == "client_closed"
    assert record["bytes_sent"] < 16 << 20  # the limit plus what socket buffers hold, not 64 MiB


# --- a non-streamed answer -----------------------------------------------------------------------

UNARY = [
    ("not-json", "bad_json_after=0", "sent a malformed response"),
    ("endless", f"endless_after=0;{ENDLESS}", f"sent a response over {MAX_EVENT_BYTES} bytes"),
]


@pytest.mark.parametrize(("spec", "says"), [case[1:] for case in UNARY], ids=[case[0] for case in UNARY])
@DIALECTS
async def test_a_non_streamed_answer_that_is_not_json_or_never_ends_is_retried_then_a_502(
        gw: Gateway, provider: str, spec: str, says: str) -> None:
    answer = await ask(gw, CHAT, provider, fault(spec), stream=False)
    assert answer.status == 502 and answer.error is not None
    assert answer.error["code"] == "upstream_error" and says in answer.error["message"]
    line = answer.log
    assert (line["status"], line["outcome"], line["error_code"]) == (502, "upstream_error", "upstream_error")
    assert line["attempt_errors"] == [f"{provider}:upstream_error"] * 2
    await assert_still_serves(gw, CHAT, provider)


# --- no connection at all: DNS, TLS --------------------------------------------------------------

UNREACHABLE = [
    ("dns", "Could not reach provider dns: DNS lookup failed"),
    ("tls-plain", "Could not reach provider tls-plain: TLS handshake failed"),
    ("tls-untrusted", "Could not reach provider tls-untrusted: TLS handshake failed: certificate not trusted"),
]


@pytest.mark.parametrize(("provider", "message"), UNREACHABLE, ids=[case[0] for case in UNREACHABLE])
@ENDPOINTS
async def test_a_provider_that_cannot_be_reached_is_a_502_naming_why(gw: Gateway, path: str, provider: str,
                                                                     message: str) -> None:
    answer = await ask(gw, path, provider)
    assert answer.status == 502 and answer.error is not None
    assert (answer.error["code"], answer.error["message"]) == ("upstream_unreachable", message)
    line = answer.log
    assert (line["status"], line["outcome"], line["error_code"]) == (502, "upstream_error", "upstream_unreachable")
    assert (line["error_message"], line["attempt_errors"]) == (message, [f"{provider}:upstream_unreachable"] * 2)
    await assert_still_serves(gw, path)


@pytest.mark.parametrize("provider", [case[0] for case in UNREACHABLE])
async def test_a_provider_that_cannot_be_reached_falls_back(gw: Gateway, provider: str) -> None:
    answer = await ask(gw, CHAT, f"{provider}-fb")
    assert (answer.status, answer.text) == (200, mock_text(12))
    line = answer.log
    assert (line["outcome"], line["provider"], line["fallback_used"]) == ("ok", "cheap", True)
    assert line["attempt_errors"] == [f"{provider}:upstream_unreachable"] * 2


# --- memory ----------------------------------------------------------------------------------------

def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def test_an_endless_line_costs_the_gateway_about_its_limit_not_what_was_sent(
        mock_upstream: Process, untrusted_tls_port: int, tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path, gateway_config(mock_upstream, untrusted_tls_port))
    try:
        for path in (CHAT, STREAM):  # everything imported and warmed up
            await assert_still_serves(gateway, path)
        before = peak_rss(gateway.proc.pid)
        for path in (CHAT, STREAM):
            for spec in (f"endless_after=0;{ENDLESS}", f"endless_after=3;{ENDLESS}"):
                answer = await ask(gateway, path, "oa", fault(spec))
                assert answer.log["error_code"] == "upstream_error"
        answer = await ask(gateway, CHAT, "oa", fault(f"endless_after=0;{ENDLESS}"), stream=False)
        assert answer.log["error_code"] == "upstream_error"
        growth = peak_rss(gateway.proc.pid) - before
        print(f"\npeak RSS grew {growth / 2**20:.1f} MiB over 8 endless lines and bodies of up to 64 MiB "
              f"(limit {MAX_EVENT_BYTES >> 20} MiB)")
        assert growth < 16 << 20
        await assert_still_serves(gateway)
    finally:
        gateway.stop()
