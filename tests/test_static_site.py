"""The demo page at / and the browser client under /static/, served by `gateway serve` with no build step."""

from __future__ import annotations

import urllib.error
import urllib.request
from email.message import Message

import pytest

from .conftest import Gateway


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_serve_prints_the_url_to_open(gateway: Gateway) -> None:
    assert f"open http://127.0.0.1:{gateway.port}/ in a browser" in gateway.stderr_path.read_text()


def test_the_root_is_the_demo_page(gateway: Gateway) -> None:
    status, headers, body = get(f"{gateway.url}/")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    for part in (b'id="prompt"', b'id="send"', b'id="stop"', b'id="answer"', b'src="/static/demo.js"'):
        assert part in body


def test_the_demo_page_may_talk_to_its_own_origin_only(gateway: Gateway) -> None:
    _, headers, _ = get(f"{gateway.url}/")
    assert "default-src 'self'" in headers["Content-Security-Policy"]


@pytest.mark.parametrize("name", ["stream.js", "demo.js", "useChatStream.js"])
def test_modules_are_served_as_javascript(gateway: Gateway, name: str) -> None:
    status, headers, _ = get(f"{gateway.url}/static/{name}")
    assert status == 200
    assert headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_static_files_are_revalidated_not_cached_blindly(gateway: Gateway) -> None:
    _, headers, _ = get(f"{gateway.url}/static/stream.js")
    assert headers["Cache-Control"] == "no-cache"
    status, _, body = get(f"{gateway.url}/static/stream.js", {"If-None-Match": headers["ETag"]})
    assert (status, body) == (304, b"")


@pytest.mark.parametrize("path", ["/static/nope.js", "/static/..%2Fapp.py", "/static/%2E%2E/gateway.toml"])
def test_only_the_files_in_the_static_directory_are_served(gateway: Gateway, path: str) -> None:
    status, headers, body = get(f"{gateway.url}{path}")
    assert status == 404
    assert headers["Content-Type"].startswith("application/json")
