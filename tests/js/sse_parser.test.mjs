// SSEParser: the same WHATWG rules as gateway/sse.py, however the bytes are split.
import assert from "node:assert/strict";
import { test } from "node:test";

import { SSEParser } from "../../gateway/static/stream.js";

const bytes = (text) => new TextEncoder().encode(text);

function parseChunks(chunks) {
  const parser = new SSEParser();
  const events = [];
  for (const chunk of chunks) events.push(...parser.feed(typeof chunk === "string" ? bytes(chunk) : chunk));
  events.push(...parser.close());
  return events;
}

// Every way of cutting `data` in two, and in three around every pair of points.
function* splits(data) {
  for (let i = 0; i <= data.length; i++) yield [data.slice(0, i), data.slice(i)];
  for (let i = 0; i <= data.length; i++) {
    for (let j = i; j <= data.length; j++) yield [data.slice(0, i), data.slice(i, j), data.slice(j)];
  }
}

const SAMPLE = "\ufeff: comment\r\nevent: delta\r\nid: 7\r\ndata: héllo 🌍\r\ndata:  two spaces\r\rdata: b\n\nretry: 1500\ndata: [DONE]\n\n";
const SAMPLE_EVENTS = [
  { event: "delta", data: "héllo 🌍\n two spaces", id: "7" },
  { event: "message", data: "b", id: "7" },
  { event: "message", data: "[DONE]", id: "7" },
];

test("lf, crlf and cr line endings give the same events", () => {
  for (const eol of ["\n", "\r\n", "\r"]) {
    const stream = `event: e${eol}data: a${eol}data: b${eol}${eol}data: c${eol}${eol}`;
    assert.deepEqual(parseChunks([stream]), [
      { event: "e", data: "a\nb", id: null },
      { event: "message", data: "c", id: null },
    ], JSON.stringify(eol));
  }
});

test("a crlf split between two reads ends one line, not two", () => {
  // Were the LF read as a second line ending, the blank line would dispatch "a" alone.
  assert.deepEqual(parseChunks(["data: a\r", "\ndata: b\r\n\r\n"]), [{ event: "message", data: "a\nb", id: null }]);
});

test("a cr at the end of a read followed by a blank line dispatches once", () => {
  assert.deepEqual(parseChunks(["data: a\r", "\r", "\n", "data: b\n\n"]), [
    { event: "message", data: "a", id: null },
    { event: "message", data: "b", id: null },
  ]);
});

test("every split of a stream into reads gives the same events as reading it whole", () => {
  const whole = bytes(SAMPLE);
  assert.deepEqual(parseChunks([whole]), SAMPLE_EVENTS);
  for (const chunks of splits(whole)) assert.deepEqual(parseChunks(chunks), SAMPLE_EVENTS);
});

test("a multi-byte character split at any byte arrives whole", () => {
  const whole = bytes("data: 🌍é\n\n"); // 4-byte and 2-byte UTF-8
  for (let i = 0; i <= whole.length; i++) {
    assert.deepEqual(parseChunks([whole.slice(0, i), whole.slice(i)]), [{ event: "message", data: "🌍é", id: null }]);
  }
  const oneByteAtATime = Array.from(whole, (b) => Uint8Array.of(b));
  assert.deepEqual(parseChunks(oneByteAtATime), [{ event: "message", data: "🌍é", id: null }]);
});

test("a leading bom is skipped even when split, and only at the start", () => {
  const bom = Uint8Array.of(0xef, 0xbb, 0xbf);
  assert.deepEqual(parseChunks([bom.slice(0, 1), bom.slice(1), "data: x\n\n"]), [{ event: "message", data: "x", id: null }]);
  assert.deepEqual(parseChunks(["data: x\n\n\ufeffdata: y\n\n"]), [{ event: "message", data: "x", id: null }]);
});

test("comments and blocks without data dispatch nothing", () => {
  assert.deepEqual(parseChunks([": keep-alive\n\n", "event: lonely\n\n", "id: 3\n\n"]), []);
});

test("multi-line data joins its lines with lf", () => {
  assert.deepEqual(parseChunks(["data: a\ndata:\ndata: c\n\n"]), [{ event: "message", data: "a\n\nc", id: null }]);
});

test("an empty data field dispatches an empty string", () => {
  assert.deepEqual(parseChunks(["data\n\n", "data:\n\n"]), [
    { event: "message", data: "", id: null },
    { event: "message", data: "", id: null },
  ]);
});

test("only one space after the colon is removed", () => {
  assert.deepEqual(parseChunks(["data:  x \n\n"]), [{ event: "message", data: " x ", id: null }]);
});

test("an event name applies to its own block only", () => {
  assert.deepEqual(parseChunks(["event: done\ndata: 1\n\ndata: 2\n\n"]), [
    { event: "done", data: "1", id: null },
    { event: "message", data: "2", id: null },
  ]);
});

test("an id with nul is ignored and the last id carries over", () => {
  assert.deepEqual(parseChunks(["id: 1\ndata: a\n\n", "id: 2\0x\ndata: b\n\n", "data: c\n\n"]), [
    { event: "message", data: "a", id: "1" },
    { event: "message", data: "b", id: "1" },
    { event: "message", data: "c", id: "1" },
  ]);
});

test("retry takes ascii digits only", () => {
  const parser = new SSEParser();
  parser.feed(bytes("retry: 1500\n\n"));
  assert.equal(parser.retry, 1500);
  for (const bad of ["retry: 15s\n\n", "retry: -1\n\n", "retry: ١٢\n\n", "retry:\n\n"]) parser.feed(bytes(bad));
  assert.equal(parser.retry, 1500);
});

test("unknown fields are ignored", () => {
  assert.deepEqual(parseChunks(["foo: bar\ndata: x\n\n"]), [{ event: "message", data: "x", id: null }]);
});

test("no event is dispatched without its final blank line", () => {
  const parser = new SSEParser();
  assert.deepEqual(parser.feed(bytes("data: complete\n\ndata: cut off\n")), [{ event: "message", data: "complete", id: null }]);
  assert.deepEqual(parser.close(), []);
  assert.equal(parser.discardedPartial, true);
});

test("a cleanly ended stream discards nothing", () => {
  const parser = new SSEParser();
  parser.feed(bytes("data: x\n\n"));
  parser.close();
  assert.equal(parser.discardedPartial, false);
});

test("parsing is linear: a line trickled in byte by byte is scanned once", () => {
  // Counting, not timing: every character examined costs one charCodeAt.
  const size = 100_000;
  const parser = new SSEParser();
  const original = String.prototype.charCodeAt;
  let calls = 0;
  String.prototype.charCodeAt = function (i) {
    calls++;
    return original.call(this, i);
  };
  try {
    const line = bytes(`data: ${"x".repeat(size)}`);
    for (let i = 0; i < line.length; i++) parser.feed(line.subarray(i, i + 1));
    const [event] = parser.feed(bytes("\n\n"));
    assert.equal(event.data.length, size);
  } finally {
    String.prototype.charCodeAt = original;
  }
  assert.ok(calls < 3 * size, `${calls} character reads for ${size} bytes`);
});
