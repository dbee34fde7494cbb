"""Hypothesis throws bodies and headers at a running gateway: every answer is a well-formed OpenAI
success or error, never a 500 or a traceback, and the process stays up."""

from __future__ import annotations

import http.client
import json
from collections import Counter
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sse import SSEParser

from .conftest import Gateway, Process, config_text, start_gateway

STATUSES: Counter[int] = Counter()
ALLOWED = {200, 400, 401, 403, 404, 405, 413, 415, 422, 429, 502, 503, 504}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
messages = st.one_of(json_values, st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "bogus"]),
     "content": st.one_of(st.text(max_size=30), json_values,
                          st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "x"]),
                                                          "text": json_values}), max_size=2))}),
    min_size=0, max_size=3))
chat_bodies = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.sampled_from(["openai-only", "anthropic-only", "chat"]), json_values),
    "messages": messages,
    "stream": st.one_of(st.booleans(), json_values),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), json_values),
    "max_tokens": st.one_of(st.integers(min_value=-5, max_value=2**66), json_values),
    "n": json_values, "seed": json_values, "tools": json_values, "stop": json_values, "user": json_values,
    "temperature": json_values, "metadata": json_values, "prompt": json_values,
})


def encode(value: object) -> bytes:
    return json.dumps(value).encode()  # the stdlib writes integers of any size, as hostile clients do


FIELDS = ["n", "seed", "tools", "stop", "user", "temperature", "top_p", "max_tokens", "stream_options",
          "metadata", "tool_choice", "response_format", "presence_penalty", "logprobs", "model", "messages"]
# A valid request with one or two fields replaced: reaches past the first check, into routing,
# the providers (both dialects) and the stream.
near_valid = st.builds(
    lambda model, text, stream, changes: {"model": model, "messages": [{"role": "user", "content": text}],
                                          "stream": stream, **changes},
    st.sampled_from(["openai-only", "anthropic-only", "chat"]), st.text(min_size=1, max_size=40), st.booleans(),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=2))
bodies = st.one_of(near_valid.map(encode), near_valid.map(encode), chat_bodies.map(encode),
                   json_values.map(encode), st.binary(max_size=200))
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255, blacklist_characters="\r\n\x7f"),
                      max_size=40)
headers = st.fixed_dictionaries(
    {"Content-Type": st.sampled_from(["application/json"] * 6 + ["application/json; charset=utf-8", "text/plain",
                                      "application/x-www-form-urlencoded", "application/vnd.api+json", ""])},
    optional={"X-User-Id": header_text, "Authorization": header_text, "X-Request-Id": header_text,
              "X-Gateway-Arm-Override": header_text, "Accept-Encoding": st.sampled_from(["gzip", "br", "x"])})


@pytest.fixture(scope="module")
def gw(mock_upstream: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("fuzz"), config_text(mock_upstream.url))
    yield gateway
    print(f"\nfuzz: {sum(STATUSES.values())} requests, every one answered well-formed; by status: "
          f"{dict(sorted(STATUSES.items()))}")
    gateway.stop()


def check_answer(status: int, content_type: str, body: bytes) -> None:
    assert status in ALLOWED, (status, body[:300])
    if content_type.startswith("text/event-stream"):
        events = SSEParser().feed(body)
        assert events, body[:300]
        last = events[-1]
        assert last.data == "[DONE]" or last.event in ("done", "error") or "error" in orjson.loads(last.data)
        return
    assert content_type.startswith("application/json"), (status, content_type, body[:300])
    data = orjson.loads(body)
    if status == 200:
        assert data.get("object") in ("chat.completion", "list") or "status" in data, data
    else:
        error = data["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str) and error["code"], data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(body=bodies, request_headers=headers, path=st.sampled_from(["/v1/chat/completions", "/v1/stream/chat"]))
def test_any_body_and_headers_get_a_well_formed_answer(gw: Gateway, body: bytes, request_headers: dict[str, str],
                                                        path: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        connection.request("POST", path, body=body, headers=request_headers)
        response = connection.getresponse()
        check_answer(response.status, response.getheader("Content-Type", ""), response.read())
    finally:
        connection.close()
    STATUSES[response.status] += 1


def test_after_the_fuzz_the_gateway_is_up_and_wrote_no_traceback(gw: Gateway) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    connection.request("GET", "/healthz")
    assert connection.getresponse().status == 200
    assert gw.proc.poll() is None
    assert "Traceback" not in gw.stderr_path.read_text()
