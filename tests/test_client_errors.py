"""Bad input gets a clear OpenAI-shaped error, the right status and one log line; never a trace."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from .conftest import Gateway

MESSAGES = [{"role": "user", "content": "hi"}]


async def post(gateway: Gateway, path: str, data: bytes, headers: dict[str, str] | None = None
               ) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gateway.url}{path}", data=data,
                                headers={"Content-Type": "application/json", **(headers or {})}) as response:
            return response.status, await response.json()


def assert_openai_error(body: dict, code: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["code"] == code
    assert "Traceback" not in body["error"]["message"]


@pytest.mark.parametrize(("body", "code", "param"), [
    (b"{not json", "invalid_json", None),
    (b"", "invalid_request", None),
    (b"[1, 2]", "invalid_request", None),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "invalid_request", "model"),
    (b'{"model": "chat"}', "invalid_request", "messages"),
    (b'{"model": "chat", "messages": []}', "invalid_request", "messages"),
    (b'{"model": "chat", "messages": [{"role": "wizard", "content": "x"}]}', "invalid_request",
     "messages[0].role"),
    (b'{"model": "chat", "messages": [{"role": "user", "content": 5}]}', "invalid_request",
     "messages[0].content"),
    (b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
     "invalid_request", "stream"),
    (b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": 7}',
     "invalid_request", "temperature"),
    (b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
     "invalid_request", "max_tokens"),
    (b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "n": 3}', "invalid_request", "n"),
])
async def test_invalid_chat_request_is_a_400_naming_the_parameter(
        gateway: Gateway, request_id: str, body: bytes, code: str, param: str | None) -> None:
    status, error = await post(gateway, "/v1/chat/completions", body, {"X-Request-Id": request_id})
    assert status == 400
    assert_openai_error(error, code)
    assert error["error"]["param"] == param
    line = gateway.log_for(request_id)
    assert (line["status"], line["outcome"], line["error_code"]) == (400, "client_error", code)


async def test_unknown_model_is_a_404_model_not_found(gateway: Gateway, request_id: str) -> None:
    status, error = await post(gateway, "/v1/chat/completions",
                               b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}',
                               {"X-Request-Id": request_id})
    assert status == 404
    assert_openai_error(error, "model_not_found")
    assert gateway.log_for(request_id)["route"] == "gpt-9"


def test_openai_sdk_raises_not_found_for_an_unknown_model(gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert raised.value.code == "model_not_found"


async def test_body_over_the_limit_is_a_413(gateway: Gateway, request_id: str) -> None:
    big = b'{"model": "chat", "messages": [{"role": "user", "content": "' + b"x" * 1_100_000 + b'"}]}'
    status, error = await post(gateway, "/v1/chat/completions", big, {"X-Request-Id": request_id})
    assert status == 413
    assert_openai_error(error, "request_too_large")
    assert gateway.log_for(request_id)["status"] == 413


async def test_unknown_path_is_a_404_in_the_openai_shape(gateway: Gateway) -> None:
    status, error = await post(gateway, "/v1/completions", b"{}")
    assert status == 404
    assert_openai_error(error, "not_found")


async def test_wrong_method_is_a_405_in_the_openai_shape(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gateway.url}/v1/chat/completions") as response:
            assert response.status == 405
            assert_openai_error(await response.json(), "method_not_allowed")


@pytest.mark.parametrize(("body", "param"), [
    (b'{}', "prompt"),
    (b'{"prompt": ""}', "prompt"),
    (b'{"prompt": "a", "messages": []}', "prompt"),
    (b'{"prompt": "a", "colour": "red"}', "colour"),
])
async def test_invalid_stream_chat_request_is_a_400(gateway: Gateway, body: bytes, param: str) -> None:
    status, error = await post(gateway, "/v1/stream/chat", body)
    assert status == 400
    assert_openai_error(error, "invalid_request")
    assert error["error"]["param"] == param


async def test_an_insane_request_id_is_replaced(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gateway.url}/v1/chat/completions", json={"model": "x"},
                                headers={"X-Request-Id": "bad id\twith spaces"}) as response:
            assert response.headers["X-Request-Id"] != "bad id\twith spaces"
            assert len(response.headers["X-Request-Id"]) == 32
