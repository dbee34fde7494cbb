// streamChat resuming a resumable stream by itself: a fetch that breaks mid-stream, then answers resumes.
import assert from "node:assert/strict";
import { test } from "node:test";

import { streamChat } from "../../gateway/static/stream.js";

const encoder = new TextEncoder();
const STREAM = { "X-Stream-Id": "s1", "X-Stream-Token": "tok-secret", "X-Request-Id": "r1" };
const ev = (id, token) => `id: ${id}\ndata: {"token":"${token}"}\n\n`;
const DONE = (id) => `id: ${id}\nevent: done\ndata: {"usage":null}\n\n`;

// A body that yields `chunks`, then breaks (a network error) if `breaks`, else ends.
function body(chunks, breaks = false) {
  let i = 0;
  return new ReadableStream({
    pull(controller) {
      if (i < chunks.length) return controller.enqueue(encoder.encode(chunks[i++]));
      if (breaks) return controller.error(new TypeError("network error"));
      return controller.close();
    },
  });
}

// A fetch answering each call with the next of `answers`: {status, headers, chunks, breaks} or an Error.
function scripted(answers) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, init });
    const answer = answers.shift();
    if (answer instanceof Error) throw answer;
    const { status = 200, headers = {}, chunks = [], breaks = false } = answer;
    return new Response(status === 204 ? null : body(chunks, breaks),
                        { status, headers: { "Content-Type": "text/event-stream", ...headers } });
  };
  return { fetch, calls };
}

const noWait = async () => {};

test("a resumable request says so with X-Resumable and learns its stream id", async () => {
  const { fetch, calls } = scripted([{ headers: STREAM, chunks: [ev(1, "a"), DONE(2)] }]);
  const result = await streamChat({ url: "/v1/stream/chat", body: {}, resumable: true, fetch });
  assert.equal(calls[0].init.headers["X-Resumable"], "1");
  assert.equal(result.ok, true);
  assert.equal(result.streamId, "s1");
});

test("a broken stream resumes after its last event id and ends with the whole text once", async () => {
  const { fetch, calls } = scripted([
    { headers: STREAM, chunks: [ev(1, "a"), ev(2, "b"), ev(3, "c")], breaks: true },
    { headers: STREAM, chunks: ["retry: 1000\n\n", ev(4, "d"), ev(5, "e"), DONE(6)] },
  ]);
  const seen = [];
  const result = await streamChat({ url: "http://gw.example/v1/stream/chat", body: {}, resumable: true, fetch,
                                    sleep: noWait, headers: { Authorization: "Bearer gk-1" },
                                    onReconnecting: (info) => seen.push(["reconnecting", info.attempt]),
                                    onResumed: (info) => seen.push(["resumed", info.attempt]) });
  assert.equal(result.ok, true);
  assert.equal(result.text, "abcde");
  assert.equal(result.resumes, 1);
  assert.deepEqual(seen, [["reconnecting", 1], ["resumed", 1]]);
  const resume = calls[1];
  assert.equal(resume.url, "http://gw.example/v1/streams/s1");
  assert.equal(resume.init.method, "GET");
  assert.equal(resume.init.headers["Last-Event-ID"], "3");
  assert.equal(resume.init.headers["X-Stream-Token"], "tok-secret");
  assert.equal(resume.init.headers.Authorization, "Bearer gk-1"); // with gateway keys, the same key
});

test("an event replayed twice is taken once", async () => {
  const { fetch } = scripted([
    { headers: STREAM, chunks: [ev(1, "a"), ev(2, "b")], breaks: true },
    { headers: STREAM, chunks: [ev(2, "b"), ev(3, "c"), DONE(4)] },
  ]);
  const result = await streamChat({ url: "/v1/stream/chat", body: {}, resumable: true, fetch, sleep: noWait });
  assert.equal(result.text, "abc");
  assert.equal(result.stats.tokens, 3);
});

test("while the network is down it keeps trying with growing waits", async () => {
  const { fetch } = scripted([
    { headers: STREAM, chunks: [ev(1, "a")], breaks: true },
    new TypeError("offline"),
    new TypeError("offline"),
    { headers: STREAM, chunks: [ev(2, "b"), DONE(3)] },
  ]);
  const waits = [];
  const result = await streamChat({ url: "/v1/stream/chat", body: {}, resumable: true, fetch,
                                    sleep: async (ms) => waits.push(ms) });
  assert.equal(result.ok, true);
  assert.equal(result.text, "ab");
  assert.deepEqual(waits, [250, 500, 1000]);
});

test("it gives up when the window is over", async () => {
  const answers = [{ headers: STREAM, chunks: [ev(1, "a")], breaks: true }];
  for (let i = 0; i < 50; i++) answers.push(new TypeError("offline"));
  const { fetch, calls } = scripted(answers);
  const result = await streamChat({ url: "/v1/stream/chat", body: {}, resumable: true, fetch, resumeWindowMs: 30,
                                    sleep: (ms) => new Promise((resolve) => setTimeout(resolve, 10)) });
  assert.equal(result.ok, false);
  assert.equal(result.error.code, "network_error");
  assert.ok(calls.length < 10, `${calls.length} calls`);
});

test("a resume answered 404 (expired, or not ours) fails with the gateway's code", async () => {
  const { fetch } = scripted([
    { headers: STREAM, chunks: [ev(1, "a")], breaks: true },
    { status: 404, headers: { "Content-Type": "application/json" },
      chunks: ['{"error":{"message":"No resumable stream","code":"stream_not_found"}}'] },
  ]);
  const result = await streamChat({ url: "/v1/stream/chat", body: {}, resumable: true, fetch, sleep: noWait });
  assert.equal(result.ok, false);
  assert.deepEqual([result.error.status, result.error.code], [404, "stream_not_found"]);
  assert.equal(result.text, "a");
});

test("a stream without a stream id is not resumed", async () => {
  const { fetch, calls } = scripted([{ chunks: [ev(1, "a")], breaks: true }]);
  const result = await streamChat({ url: "/v1/stream/chat", body: {}, resumable: true, fetch, sleep: noWait });
  assert.equal(result.error.code, "stream_interrupted");
  assert.equal(calls.length, 1);
});

test("stop sends DELETE with the token, so the upstream stops too", async () => {
  const controller = new AbortController();
  const chunks = Array.from({ length: 50 }, (_, i) => ev(i + 1, "x"));
  const { fetch, calls } = scripted([{ headers: STREAM, chunks }, { status: 204 }]);
  const result = await streamChat({ url: "/v1/stream/chat", body: {}, resumable: true, fetch,
                                    signal: controller.signal,
                                    onToken: (t, stats) => stats.tokens === 3 && controller.abort() });
  assert.equal(result.aborted, true);
  const [, cancel] = calls;
  assert.equal(cancel.url, "/v1/streams/s1");
  assert.equal(cancel.init.method, "DELETE");
  assert.equal(cancel.init.headers["X-Stream-Token"], "tok-secret");
});
