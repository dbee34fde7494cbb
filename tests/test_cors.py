"""CORS: same origin only by default; an allowlist or "*" when configured, never with
credentials; the headers ride on the streaming response itself, not only on the preflight."""

from __future__ import annotations

import textwrap
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy

from gateway.app import build_app
from gateway.config import parse_config
from gateway.record import RequestLog

from .conftest import Process

APP = "http://app.example.test"
BODY = {"model": "chat", "prompt": "hi"}


async def serve(mock_url: str, tmp_path: Path, cors_origins: str | None) -> TestServer:
    origins = f"cors_origins = {cors_origins}" if cors_origins is not None else ""
    raw = tomllib.loads(textwrap.dedent(f"""
        [server]
        {origins}
        [providers.oa]
        dialect = "openai"
        base_url = "{mock_url}/oa/v1"
        [routes.chat]
        arms = [{{ name = "only", provider = "oa", model = "m", weight = 100 }}]
        """))
    log = RequestLog(str(tmp_path / "requests.log"))
    app = build_app(parse_config(raw, "test", {}), log=log)

    async def close_log(app: object) -> None:
        log.close()

    app.on_cleanup.append(close_log)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    return server


@pytest.fixture
async def default_gateway(mock_upstream: Process, tmp_path: Path) -> AsyncIterator[TestServer]:
    server = await serve(mock_upstream.url, tmp_path, None)
    yield server
    await server.close()


@pytest.fixture
async def allowlist_gateway(mock_upstream: Process, tmp_path: Path) -> AsyncIterator[TestServer]:
    server = await serve(mock_upstream.url, tmp_path, f'["{APP}"]')
    yield server
    await server.close()


@pytest.fixture
async def any_origin_gateway(mock_upstream: Process, tmp_path: Path) -> AsyncIterator[TestServer]:
    server = await serve(mock_upstream.url, tmp_path, '["*"]')
    yield server
    await server.close()


async def stream_headers(server: TestServer, origin: str) -> CIMultiDictProxy[str]:
    async with aiohttp.ClientSession() as session:
        async with session.post(server.make_url("/v1/stream/chat"), json=BODY, headers={"Origin": origin}) as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            await r.read()
            return r.headers


async def test_by_default_a_page_on_another_origin_gets_no_cors_headers(default_gateway: TestServer) -> None:
    headers = await stream_headers(default_gateway, APP)
    assert "Access-Control-Allow-Origin" not in headers


async def test_an_allowed_origin_finds_cors_headers_on_the_stream_itself(allowlist_gateway: TestServer) -> None:
    headers = await stream_headers(allowlist_gateway, APP)
    assert headers["Access-Control-Allow-Origin"] == APP
    exposed = {h.strip().lower() for h in headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-gateway-arm", "x-request-id"} <= exposed
    assert "Access-Control-Allow-Credentials" not in headers


async def test_an_origin_not_on_the_list_gets_no_cors_headers(allowlist_gateway: TestServer) -> None:
    headers = await stream_headers(allowlist_gateway, "http://evil.example.test")
    assert "Access-Control-Allow-Origin" not in headers


async def test_the_preflight_admits_the_allowed_origin_and_refuses_others(allowlist_gateway: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        url = allowlist_gateway.make_url("/v1/stream/chat")
        async with session.options(url, headers={"Origin": APP, **ask}) as allowed:
            assert allowed.status == 200
            assert allowed.headers["Access-Control-Allow-Origin"] == APP
        async with session.options(url, headers={"Origin": "http://evil.example.test", **ask}) as refused:
            assert refused.status == 403
            assert "Access-Control-Allow-Origin" not in refused.headers


async def test_star_admits_any_origin_but_never_with_credentials(any_origin_gateway: TestServer) -> None:
    headers = await stream_headers(any_origin_gateway, "http://anyone.example.test")
    assert headers["Access-Control-Allow-Origin"] in ("*", "http://anyone.example.test")
    assert "Access-Control-Allow-Credentials" not in headers


async def test_a_page_on_an_allowed_origin_can_read_a_resumable_streams_id_and_token_and_cancel_it(
        allowlist_gateway: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(allowlist_gateway.make_url("/v1/stream/chat"), json={**BODY, "resumable": True},
                                headers={"Origin": APP}) as response:
            await response.read()
            exposed = {h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
            assert {"x-stream-id", "x-stream-token"} <= exposed
        ask = {"Origin": APP, "Access-Control-Request-Method": "DELETE",
               "Access-Control-Request-Headers": "x-stream-token"}
        async with session.options(allowlist_gateway.make_url(f"/v1/streams/{response.headers['X-Stream-Id']}"),
                                   headers=ask) as preflight:
            assert preflight.status == 200 and preflight.headers["Access-Control-Allow-Origin"] == APP
