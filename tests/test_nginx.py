"""nginx from nginx/templates/gateway.conf.template, for real: every token passes at once,
gzip never holds a stream back, heartbeats outlast a short read timeout, a client that
leaves closes the upstream, and limits and ids match the gateway's."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.sse import SSEParser

from .conftest import Gateway, Process
from .edge import Nginx, start_nginx

PACED_100_MS = {"X-Mock-Tokens": "20", "X-Mock-First-Token-Delay-Ms": "0", "X-Mock-Inter-Token-Delay-Ms": "100"}
BODY = {"prompt": "hi"}  # the edge gateway's default route: the paced mock


async def token_arrivals(url: str, headers: dict[str, str]) -> tuple[list[float], list[int], aiohttp.ClientResponse]:
    """POST /v1/stream/chat; when each token arrived, and how many tokens each network read held.

    Reads raw bytes (no decompression) and asks for gzip like a browser does, so
    any compression or buffering on the way shows up as tokens landing together."""
    arrivals: list[float] = []
    per_read: list[int] = []
    parser = SSEParser()
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.post(f"{url}/v1/stream/chat", json=BODY, ssl=False,
                                headers={**headers, "Accept-Encoding": "gzip, deflate, br"}) as response:
            assert response.status == 200, await response.text()
            async for chunk in response.content.iter_any():
                now = time.monotonic()
                tokens = [e for e in parser.feed(chunk) if e.event == "message"]
                arrivals += [now] * len(tokens)
                if tokens:
                    per_read.append(len(tokens))
    return arrivals, per_read, response


@pytest.mark.parametrize("via", ["direct", "nginx http", "nginx https"])
async def test_tokens_paced_100_ms_apart_arrive_one_by_one(via: str, nginx: Nginx, edge_gateway: Gateway) -> None:
    url = {"direct": edge_gateway.url, "nginx http": nginx.http_url, "nginx https": nginx.https_url}[via]
    arrivals, per_read, response = await token_arrivals(url, PACED_100_MS)
    assert "Content-Encoding" not in response.headers  # asked for gzip, got the stream as it is
    assert len(arrivals) == 20
    gaps_ms = [1000 * (b - a) for a, b in zip(arrivals, arrivals[1:])]
    print(f"\n{via}: gaps between tokens min {min(gaps_ms):.1f} / median {statistics.median(gaps_ms):.1f} / "
          f"max {max(gaps_ms):.1f} ms; tokens per network read: max {max(per_read)}")
    # Buffering or compression would deliver several tokens in one read, with ~0 ms between them.
    assert max(per_read) == 1
    assert min(gaps_ms) > 50, gaps_ms


async def test_a_silent_stream_outlives_a_short_proxy_read_timeout_thanks_to_heartbeats(
        edge_gateway: Gateway, tmp_path: Path) -> None:
    """nginx cuts an upstream that sends nothing for proxy_read_timeout (60 s by default;
    the template sets 600 s). Waiting that long is too slow for the suite, so this nginx
    is rendered from the same template with a 2 s read timeout, and the provider falls
    silent for 3.5 s mid-stream. The gateway's heartbeat (`: keep-alive` every
    server.heartbeat_s, 0.5 s here) keeps bytes flowing, so the stream completes.
    The companion test below shows the same nginx does cut a silence of the same length."""
    short = start_nginx(tmp_path / "nginx", f"127.0.0.1:{edge_gateway.port}", read_timeout="2s")
    try:
        headers = {"X-Mock-Tokens": "2", "X-Mock-First-Token-Delay-Ms": "0", "X-Mock-Inter-Token-Delay-Ms": "3500"}
        parser = SSEParser()
        comments = 0
        events = []
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{short.http_url}/v1/stream/chat", json=BODY, headers=headers) as response:
                assert response.status == 200
                async for chunk in response.content.iter_any():
                    comments += chunk.count(b": keep-alive")
                    events += parser.feed(chunk)
        assert [e.event for e in events] == ["message", "message", "done"]
        assert comments >= 3, f"{comments} heartbeats in 3.5 s of silence"
    finally:
        short.stop()


async def test_the_short_read_timeout_does_cut_a_silence_without_heartbeats(
        edge_gateway: Gateway, tmp_path: Path) -> None:
    # Before the first token the gateway sends nothing (it may still fall back), so no heartbeat either.
    short = start_nginx(tmp_path / "nginx", f"127.0.0.1:{edge_gateway.port}", read_timeout="2s")
    try:
        headers = {"X-Mock-Tokens": "2", "X-Mock-First-Token-Delay-Ms": "3500"}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{short.http_url}/v1/stream/chat", json=BODY, headers=headers) as response:
                assert response.status == 504
    finally:
        short.stop()


async def test_stop_through_nginx_closes_the_upstream_within_a_second(nginx: Nginx, edge_gateway: Gateway,
                                                                     paced_mock: Process) -> None:
    tag, rid = uuid.uuid4().hex, uuid.uuid4().hex
    headers = {"X-Mock-Tokens": "200", "X-Mock-Tag": tag, "X-Request-Id": rid}
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{nginx.http_url}/v1/stream/chat", json=BODY, headers=headers)
        seen = 0
        async for line in response.content:
            seen += line.startswith(b"data: ")
            if seen == 3:
                break
        closed_at = time.time()
        response.close()  # drops the connection, as a browser's AbortController does
    deadline = time.monotonic() + 5
    while not (records := paced_mock.mock_records(tag)) or records[0]["ended"] is None:
        assert time.monotonic() < deadline, "the provider never saw the stream end"
        await asyncio.sleep(0.02)
    [record] = records
    print(f"\nthrough nginx: upstream closed {1000 * (record['ended'] - closed_at):.0f} ms after the client left")
    assert record["outcome"] == "client_closed"
    assert record["ended"] - closed_at < 1.0
    line = edge_gateway.log_for(rid)  # the client's X-Request-Id reached the gateway
    assert (line["outcome"], line["client_disconnected"]) == ("client_disconnected", True)


async def test_nginx_gives_a_request_without_an_id_one_that_the_gateway_uses(nginx: Nginx,
                                                                             edge_gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{nginx.http_url}/v1/stream/chat", json=BODY) as response:
            await response.read()
            rid = response.headers["X-Request-Id"]
    assert len(rid) == 32 and int(rid, 16) >= 0  # nginx's $request_id
    assert edge_gateway.log_for(rid)["outcome"] == "ok"


JSON = {"Content-Type": "application/json"}


async def test_a_body_over_the_gateway_limit_is_refused_by_nginx_in_the_gateway_shape(
        nginx: Nginx, edge_gateway: Gateway) -> None:
    too_big = b"x" * (1_048_576 + 1)
    at_limit = b"x" * 1_048_576
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{edge_gateway.url}/v1/stream/chat", data=too_big, headers=JSON) as direct:
            expected = (direct.status, await direct.json())
        async with session.post(f"{nginx.http_url}/v1/stream/chat", data=too_big, headers=JSON) as proxied:
            assert (proxied.status, await proxied.json()) == expected
            assert proxied.content_type == "application/json"
        async with session.post(f"{nginx.http_url}/v1/stream/chat", data=at_limit, headers=JSON) as passed:
            assert passed.status == 400  # reached the gateway, which found it not JSON
            assert (await passed.json())["error"]["code"] == "invalid_json"


@pytest.fixture(params=["http", "https"])
def front(request: pytest.FixtureRequest, nginx: Nginx) -> Iterator[str]:
    yield nginx.http_url if request.param == "http" else nginx.https_url


async def test_healthz_and_the_demo_page_are_proxied(front: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{front}/healthz", ssl=False) as health:
            assert (health.status, await health.json()) == (200, {"status": "ok"})
        async with session.get(f"{front}/", ssl=False) as page:
            assert page.status == 200 and b'id="send"' in await page.read()
        async with session.get(f"{front}/static/stream.js", ssl=False) as script:
            assert script.status == 200 and script.content_type == "text/javascript"


async def test_metrics_are_not_public_through_nginx(nginx: Nginx) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{nginx.http_url}/metrics") as response:
            assert response.status == 404


@pytest.mark.parametrize("path", ["/admin/routes", "/admin", "/admin/routes/chat/weights"])
async def test_the_admin_api_is_not_proxied_through_nginx(nginx: Nginx, path: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{nginx.http_url}{path}") as response:
            # nginx's own 404, not the gateway's JSON one: the request never reached the gateway.
            assert response.status == 404 and response.content_type == "text/html"
