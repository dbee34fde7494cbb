// streamChat over a fetch that returns real Response objects, and frameBatcher.
import assert from "node:assert/strict";
import { test } from "node:test";

import { frameBatcher, streamChat } from "../../gateway/static/stream.js";

const encoder = new TextEncoder();

// A fetch whose response body yields `chunks` (strings), waiting `gapMs` between them.
function fakeFetch(chunks, { status = 200, headers = {}, gapMs = 0 } = {}) {
  const seen = {};
  const fetch = async (url, init) => {
    Object.assign(seen, { url, init });
    let i = 0;
    const body = new ReadableStream({
      async pull(controller) {
        if (init.signal && init.signal.aborted) return controller.error(new DOMException("aborted", "AbortError"));
        if (i >= chunks.length) return controller.close();
        if (gapMs) await new Promise((resolve) => setTimeout(resolve, gapMs));
        controller.enqueue(encoder.encode(chunks[i++]));
      },
    });
    init.signal?.addEventListener("abort", () => body.cancel().catch(() => {}));
    return new Response(body, { status, headers: { "Content-Type": "text/event-stream", ...headers } });
  };
  return { fetch, seen };
}

const TOKEN_STREAM = [
  'data: {"token":"Hel',
  'lo"}\n\ndata: {"token":" wörld"}\n\n: keep-alive\n\n',
  'event: done\ndata: {"usage":{"prompt_tokens":1,"completion_tokens":2},"ttft_ms":3.0,"latency_ms":9.0}\n\n',
];

test("the browser stream yields its tokens, usage, arm and request id", async () => {
  const { fetch, seen } = fakeFetch(TOKEN_STREAM, { headers: { "X-Gateway-Arm": "canary", "X-Request-Id": "r1" } });
  const tokens = [];
  let done = null;
  const result = await streamChat({ url: "/v1/stream/chat", body: { prompt: "hi" }, fetch,
                                    onToken: (t) => tokens.push(t), onDone: (r) => (done = r) });
  assert.deepEqual(tokens, ["Hello", " wörld"]);
  assert.equal(result.ok, true);
  assert.equal(result.text, "Hello wörld");
  assert.equal(result.arm, "canary");
  assert.equal(result.requestId, "r1");
  assert.deepEqual(result.usage, { prompt_tokens: 1, completion_tokens: 2 });
  assert.equal(done, result);
  assert.equal(seen.init.method, "POST");
  assert.deepEqual(JSON.parse(seen.init.body), { prompt: "hi" });
});

test("chat completions chunks and [DONE] work the same way", async () => {
  const chunk = (content) => `data: {"choices":[{"index":0,"delta":{"content":${JSON.stringify(content)}}}]}\n\n`;
  const { fetch } = fakeFetch([
    'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
    chunk("Hi"), chunk(" there"),
    'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n',
    "data: [DONE]\n\n",
  ]);
  const result = await streamChat({ url: "/v1/chat/completions", body: {}, fetch });
  assert.equal(result.ok, true);
  assert.equal(result.text, "Hi there");
  assert.equal(result.stats.tokens, 2);
  assert.deepEqual(result.usage, { prompt_tokens: 1, completion_tokens: 2 });
});

test("stats report time to first token, token count and tokens per second", async () => {
  const { fetch } = fakeFetch(['data: {"token":"a"}\n\n', 'data: {"token":"b"}\n\n', 'data: {"token":"c"}\n\n',
                               "event: done\ndata: {}\n\n"], { gapMs: 20 });
  const result = await streamChat({ url: "/", body: {}, fetch });
  const { ttftMs, tokens, tokensPerSecond, elapsedMs } = result.stats;
  assert.equal(tokens, 3);
  assert.ok(ttftMs >= 15 && ttftMs <= elapsedMs, `ttft ${ttftMs} ms`);
  assert.ok(tokensPerSecond > 0 && tokensPerSecond < 1000 / 15, `${tokensPerSecond} tokens/s at 20 ms apart`);
});

test("an error event fails the stream with the gateway's code", async () => {
  const { fetch } = fakeFetch(['data: {"token":"a"}\n\n',
    'event: error\ndata: {"error":{"message":"upstream went away","type":"api_error","code":"upstream_error"}}\n\n']);
  let reported = null;
  const result = await streamChat({ url: "/", body: {}, fetch, onError: (e) => (reported = e) });
  assert.equal(result.ok, false);
  assert.equal(result.error.code, "upstream_error");
  assert.equal(result.error.message, "upstream went away");
  assert.equal(reported, result.error);
  assert.equal(result.text, "a");
});

test("an error chunk on chat completions fails the stream too", async () => {
  const { fetch } = fakeFetch(['data: {"error":{"message":"idle","code":"timeout_idle"}}\n\n']);
  const result = await streamChat({ url: "/", body: {}, fetch });
  assert.equal(result.error.code, "timeout_idle");
});

test("an http error reports the gateway's json error", async () => {
  const { fetch } = fakeFetch(['{"error":{"message":"The model \'x\' does not exist","code":"model_not_found"}}'],
                              { status: 404, headers: { "Content-Type": "application/json" } });
  const result = await streamChat({ url: "/", body: {}, fetch });
  assert.deepEqual(result.error, { status: 404, code: "model_not_found", message: "The model 'x' does not exist" });
});

test("an http error that is not json reports the status", async () => {
  const { fetch } = fakeFetch(["<html>Bad Gateway</html>"], { status: 502, headers: { "Content-Type": "text/html" } });
  const result = await streamChat({ url: "/", body: {}, fetch });
  assert.equal(result.error.code, "http_error");
  assert.match(result.error.message, /^HTTP 502/);
});

test("a stream that ends without its final event is reported as interrupted", async () => {
  const { fetch } = fakeFetch(['data: {"token":"a"}\n\n', 'data: {"token":"b"}']);
  const result = await streamChat({ url: "/", body: {}, fetch });
  assert.equal(result.ok, false);
  assert.equal(result.error.code, "stream_interrupted");
  assert.equal(result.text, "a");
});

test("a network failure is an error, not a rejection", async () => {
  const fetch = async () => {
    throw new TypeError("fetch failed");
  };
  const result = await streamChat({ url: "/", body: {}, fetch });
  assert.equal(result.error.code, "network_error");
});

test("aborting stops the stream without calling onDone or onError", async () => {
  const chunks = Array.from({ length: 100 }, (_, i) => `data: {"token":"${i}"}\n\n`);
  const { fetch, seen } = fakeFetch(chunks, { gapMs: 5 });
  const controller = new AbortController();
  const called = [];
  const result = await streamChat({ url: "/", body: {}, fetch, signal: controller.signal,
                                    onToken: (t, stats) => stats.tokens === 3 && controller.abort(),
                                    onDone: () => called.push("done"), onError: () => called.push("error") });
  assert.equal(result.aborted, true);
  assert.equal(result.ok, false);
  assert.equal(result.stats.tokens, 3);
  assert.deepEqual(called, []);
  assert.equal(seen.init.signal, controller.signal);
});

test("a batcher calls flush once per frame with everything pushed since the last", () => {
  const frames = [];
  const flushed = [];
  const batch = frameBatcher((text) => flushed.push(text), { schedule: (f) => frames.push(f), unschedule: () => {} });
  for (const t of ["a", "b", "c"]) batch.push(t);
  assert.equal(frames.length, 1);
  frames.shift()();
  batch.push("d");
  frames.shift()();
  assert.deepEqual(flushed, ["abc", "d"]);
});

test("a cancelled batcher drops what it held and never flushes", () => {
  const flushed = [];
  let cancelled = 0;
  const batch = frameBatcher((text) => flushed.push(text), { schedule: () => 1, unschedule: () => cancelled++ });
  batch.push("a");
  batch.cancel();
  assert.equal(cancelled, 1);
  assert.equal(batch.pending, false);
  assert.deepEqual(flushed, []);
});

test("without requestAnimationFrame (node) the batcher still flushes", async () => {
  const flushed = [];
  const batch = frameBatcher((text) => flushed.push(text));
  batch.push("x");
  batch.push("y");
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.deepEqual(flushed, ["xy"]);
});
