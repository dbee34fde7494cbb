// stream.js: read the gateway's token streams in a browser (or node >= 20).
// No dependencies, no build step: `import { streamChat } from "/static/stream.js"`.
//
//   SSEParser      bytes in, complete events out (WHATWG rules, like gateway/sse.py)
//   streamChat     POST + fetch/ReadableStream: tokens, stats, arm; stops with an AbortSignal
//   frameBatcher   coalesces tokens into one DOM update per animation frame
//
// Why not EventSource: it cannot POST a body, cannot send headers, and cannot
// be stopped without reconnecting; a fetch with an AbortController can.

const LF = 10;
const CR = 13;

/**
 * Incremental Server-Sent Events parser (WHATWG "event stream interpretation").
 *
 *   const parser = new SSEParser();
 *   parser.feed(bytes)  // -> [{event, data, id}, ...] complete events only
 *   parser.close()      // end of stream: an unterminated event is dropped, never dispatched
 *
 * Bytes may be split anywhere: inside a multi-byte UTF-8 character (a
 * streaming TextDecoder keeps the partial character), between the CR and LF of
 * a line ending, inside a field. Each character is looked at once, so the work
 * is linear in the input however it is chunked.
 */
export class SSEParser {
  constructor() {
    // Streaming decode; a leading BOM is consumed (ignoreBOM: false), as the spec asks.
    this._decoder = new TextDecoder("utf-8");
    this._line = []; // pieces of the line not yet ended
    this._skipLF = false; // the last chunk ended in CR: a leading LF belongs to that line ending
    this._data = [];
    this._type = "";
    this._id = null; // the last event id: it carries over to later events, as in EventSource
    /** The latest valid `retry:` value (milliseconds), or null. */
    this.retry = null;
    /** True when close() dropped an event that had no final blank line. */
    this.discardedPartial = false;
  }

  /** Parse a chunk of bytes (Uint8Array); return the events it completed. */
  feed(chunk) {
    return this._text(this._decoder.decode(chunk, { stream: true }));
  }

  /** End of stream. An event without its final blank line is not dispatched. */
  close() {
    const events = this._text(this._decoder.decode());
    if (this._line.length > 0 || this._data.length > 0 || this._type !== "") this.discardedPartial = true;
    this._line = [];
    this._data = [];
    this._type = "";
    return events;
  }

  _text(text) {
    const events = [];
    let start = 0;
    let i = 0;
    if (this._skipLF && text.length > 0) {
      this._skipLF = false;
      if (text.charCodeAt(0) === LF) start = i = 1;
    }
    for (; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== LF && c !== CR) continue;
      this._line.push(text.slice(start, i));
      const line = this._line.length === 1 ? this._line[0] : this._line.join("");
      this._line = [];
      if (c === CR) {
        if (i + 1 < text.length) {
          if (text.charCodeAt(i + 1) === LF) i++;
        } else {
          this._skipLF = true; // the LF, if any, is in the next chunk
        }
      }
      start = i + 1;
      const event = this._processLine(line);
      if (event !== null) events.push(event);
    }
    if (start < text.length) this._line.push(text.slice(start));
    return events;
  }

  _processLine(line) {
    if (line === "") return this._dispatch();
    if (line.charCodeAt(0) === 58 /* ":" comment, e.g. the gateway's keep-alive */) return null;
    const colon = line.indexOf(":");
    const name = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.charCodeAt(0) === 32) value = value.slice(1);
    if (name === "data") this._data.push(value);
    else if (name === "event") this._type = value;
    else if (name === "id") {
      if (!value.includes("\0")) this._id = value;
    } else if (name === "retry") {
      if (/^[0-9]+$/.test(value)) this.retry = Number(value);
    }
    return null;
  }

  _dispatch() {
    const data = this._data;
    const type = this._type;
    this._data = [];
    this._type = "";
    if (data.length === 0) return null; // a block of only comments, ids or event names
    return { event: type || "message", data: data.join("\n"), id: this._id };
  }
}

const now = () => (globalThis.performance ? performance.now() : Date.now());

/**
 * Stream one chat request. Works with both endpoints:
 *   /v1/stream/chat       body {prompt} or {messages}: `data: {"token"}` events, then `event: done`
 *   /v1/chat/completions  body {model, messages, stream: true}: chunks, then `data: [DONE]`
 *
 * Callbacks (all optional):
 *   onOpen({status, arm, requestId})  the response headers arrived (arm = X-Gateway-Arm)
 *   onToken(text, stats)              each piece of answer text, as it arrives
 *   onEvent(event)                    every parsed SSE event {event, data, id}, for anything else
 *   onDone(result)                    the stream ended cleanly
 *   onError(error, result)            it failed: HTTP error, error event, cut connection, network
 *
 * Returns a promise of the result, which never rejects for a failed stream:
 *   {ok, aborted, status, arm, requestId, text, usage, error, stats}
 *   stats: {ttftMs, tokens, tokensPerSecond, elapsedMs}
 *     ttftMs          request start to first token, as this client saw it
 *     tokens          pieces of text received (content events)
 *     tokensPerSecond arrival rate after the first token: (tokens - 1) / (last - first)
 *   error: {status, code, message}, the gateway's OpenAI-shaped error where there is one
 *
 * Stop: abort the `signal`'s AbortController. The fetch and its connection
 * close at once (the gateway then closes the upstream); the result has
 * aborted: true and neither onDone nor onError is called.
 */
export async function streamChat({ url, body, headers = {}, signal, onOpen, onToken, onEvent, onDone,
                                   onError, fetch: fetchImpl = globalThis.fetch }) {
  const started = now();
  let firstAt = 0;
  let lastAt = 0;
  const stats = { ttftMs: null, tokens: 0, tokensPerSecond: 0, elapsedMs: 0 };
  const result = { ok: false, aborted: false, status: 0, arm: null, requestId: null, text: "", usage: null,
                   error: null, stats };
  const parts = [];

  const finish = (error) => {
    stats.elapsedMs = now() - started;
    result.text = parts.join("");
    if (signal && signal.aborted) {
      result.aborted = true;
    } else if (error) {
      result.error = error;
      if (onError) onError(error, result);
    } else {
      result.ok = true;
      if (onDone) onDone(result);
    }
    return result;
  };

  const token = (text) => {
    if (!text) return;
    const t = now();
    if (stats.tokens === 0) {
      firstAt = t;
      stats.ttftMs = t - started;
    }
    lastAt = t;
    stats.tokens += 1;
    stats.tokensPerSecond = stats.tokens > 1 && lastAt > firstAt ? (stats.tokens - 1) / ((lastAt - firstAt) / 1000) : 0;
    stats.elapsedMs = t - started;
    parts.push(text);
    if (onToken) onToken(text, stats);
  };

  let response;
  try {
    response = await fetchImpl(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...headers },
      body: JSON.stringify(body),
      signal,
    });
  } catch (exc) {
    return finish({ status: 0, code: "network_error", message: String((exc && exc.message) || exc) });
  }
  result.status = response.status;
  result.arm = response.headers.get("X-Gateway-Arm");
  result.requestId = response.headers.get("X-Request-Id");
  if (onOpen) onOpen({ status: result.status, arm: result.arm, requestId: result.requestId });
  if (!response.ok) {
    let text = "";
    try {
      text = await response.text();
    } catch {
      // the body is lost: the status says enough
    }
    return finish(httpError(response.status, text));
  }

  const parser = new SSEParser();
  let ended = false; // a terminal event arrived: `done`, [DONE] or an error
  let failure = null;
  const handle = (event) => {
    if (onEvent) onEvent(event);
    if (event.data === "[DONE]") {
      ended = true;
      return;
    }
    let payload;
    try {
      payload = JSON.parse(event.data);
    } catch {
      return; // not ours to understand: onEvent saw it
    }
    if (payload === null || typeof payload !== "object") return;
    if (event.event === "error" || payload.error) {
      const e = payload.error || {};
      failure = { status: response.status, code: e.code || "stream_error", message: e.message || event.data };
      ended = true;
    } else if (event.event === "done") {
      result.usage = payload.usage || null;
      ended = true;
    } else if (typeof payload.token === "string") {
      token(payload.token);
    } else if (Array.isArray(payload.choices)) {
      for (const choice of payload.choices) token(choice.delta && choice.delta.content);
      if (payload.usage) result.usage = payload.usage;
    } else if (payload.usage) {
      result.usage = payload.usage;
    }
  };

  const reader = response.body.getReader();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      for (const event of parser.feed(value)) handle(event);
    }
    for (const event of parser.close()) handle(event);
  } catch (exc) {
    if (!(signal && signal.aborted)) {
      return finish({ status: response.status, code: "stream_interrupted",
                      message: `the connection broke mid-stream: ${(exc && exc.message) || exc}` });
    }
    return finish(null);
  }
  if (failure) return finish(failure);
  if (!ended) {
    return finish({ status: response.status, code: "stream_interrupted",
                    message: "the stream ended without its final event" });
  }
  return finish(null);
}

function httpError(status, text) {
  try {
    const e = JSON.parse(text).error;
    if (e && e.message) return { status, code: e.code || "http_error", message: e.message };
  } catch {
    // not the gateway's JSON (a proxy's error page, say): report the status
  }
  return { status, code: "http_error", message: `HTTP ${status}${text ? `: ${text.slice(0, 200)}` : ""}` };
}

const frame = globalThis.requestAnimationFrame
  ? [(f) => globalThis.requestAnimationFrame(f), (h) => globalThis.cancelAnimationFrame(h)]
  : [(f) => setTimeout(f, 16), (h) => clearTimeout(h)]; // node: a 60 Hz stand-in

/**
 * One update per animation frame, however fast tokens arrive:
 *
 *   const batch = frameBatcher((text) => answer.appendData(text));
 *   onToken: (t) => batch.push(t)
 *
 * push(text) queues text and asks for a frame if none is pending; the frame
 * calls flush(allQueuedText) once. request() asks for a frame without text
 * (to redraw stats). cancel() drops what is queued (on unmount, say). A
 * hidden tab gets no frames: the text waits and is drawn in one go on return.
 */
export function frameBatcher(flush, { schedule = frame[0], unschedule = frame[1] } = {}) {
  let queued = [];
  let handle = null;
  const run = () => {
    handle = null;
    const text = queued.length === 1 ? queued[0] : queued.join("");
    queued = [];
    flush(text);
  };
  return {
    push(text) {
      if (text) queued.push(text);
      this.request();
    },
    request() {
      if (handle === null) handle = schedule(run);
    },
    cancel() {
      if (handle !== null) unschedule(handle);
      handle = null;
      queued = [];
    },
    get pending() {
      return handle !== null;
    },
  };
}
