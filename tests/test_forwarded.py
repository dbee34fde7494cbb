"""X-Forwarded-For is believed only from trusted proxies, read from the right."""

from __future__ import annotations

import doctest
import textwrap
import tomllib
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import forwarded
from gateway.app import build_app
from gateway.config import parse_config
from gateway.forwarded import CLIENT_ADDRESS, client_address, trusted_networks
from gateway.record import RequestLog

NGINX = trusted_networks(["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"])


def test_the_peer_is_the_client_when_nothing_is_trusted() -> None:
    assert client_address("127.0.0.1", "203.0.113.7", ()) == "127.0.0.1"


def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    assert client_address("198.51.100.9", "203.0.113.7", NGINX) == "198.51.100.9"


def test_a_trusted_peer_names_the_client_in_the_last_hop() -> None:
    assert client_address("127.0.0.1", "203.0.113.7", NGINX) == "203.0.113.7"


def test_a_spoofed_address_left_of_the_real_client_is_not_believed() -> None:
    # The client sent "X-Forwarded-For: 6.6.6.6"; nginx appended what it saw.
    assert client_address("127.0.0.1", "6.6.6.6, 203.0.113.7", NGINX) == "203.0.113.7"


def test_every_trusted_hop_is_skipped() -> None:
    assert client_address("127.0.0.1", "203.0.113.7, 10.0.0.5, 10.9.9.9", NGINX) == "203.0.113.7"


def test_when_every_hop_is_trusted_the_leftmost_is_the_client() -> None:
    assert client_address("127.0.0.1", "10.0.0.5, 10.9.9.9", NGINX) == "10.0.0.5"


def test_a_trusted_peer_without_the_header_is_the_client() -> None:
    assert client_address("127.0.0.1", None, NGINX) == "127.0.0.1"
    assert client_address("127.0.0.1", "", NGINX) == "127.0.0.1"


def test_garbage_in_the_header_stops_at_the_last_good_hop() -> None:
    assert client_address("127.0.0.1", "not-an-ip, 10.0.0.5", NGINX) == "10.0.0.5"
    assert client_address("127.0.0.1", "203.0.113.7, unknown", NGINX) == "127.0.0.1"


def test_ports_brackets_and_ipv4_mapped_addresses_are_understood() -> None:
    assert client_address("::ffff:127.0.0.1", "203.0.113.7:5678", NGINX) == "203.0.113.7"
    assert client_address("2001:db8::1", "[2001:db9::7]:443", NGINX) == "2001:db9::7"


def test_a_missing_peer_is_an_empty_address() -> None:
    assert client_address(None, "203.0.113.7", NGINX) == ""


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(forwarded).failed == 0


async def test_the_gateway_stores_the_client_address_on_each_request(tmp_path: Path) -> None:
    raw = tomllib.loads(textwrap.dedent("""
        [server]
        trusted_proxies = ["127.0.0.1"]
        [providers.p]
        dialect = "openai"
        base_url = "http://127.0.0.1:9/v1"
        [routes.r]
        arms = [{ name = "a", provider = "p", model = "m", weight = 100 }]
        """))
    log = RequestLog(str(tmp_path / "requests.log"))
    app = build_app(parse_config(raw, "test", {}), log=log)

    async def whoami(request: web.Request) -> web.Response:
        return web.Response(text=request[CLIENT_ADDRESS])

    app.router.add_get("/_whoami", whoami)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            response = await session.get(server.make_url("/_whoami"), headers={"X-Forwarded-For": "203.0.113.7"})
            assert await response.text() == "203.0.113.7"
    finally:
        await server.close()
        log.close()
