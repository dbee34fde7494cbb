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
 *   onReconnecting({attempt, error})  resumable: the connection broke; a resume is coming
 *   onResumed({attempt})              resumable: the resume answered; the stream carries on
 *
 * Returns a promise of the result, which never rejects for a failed stream:
 *   {ok, aborted, status, arm, requestId, text, usage, error, stats, streamId, resumes}
 *   stats: {ttftMs, tokens, tokensPerSecond, elapsedMs}
 *     ttftMs          request start to first token, as this client saw it
 *     tokens          pieces of text received (content events)
 *     tokensPerSecond arrival rate after the first token: (tokens - 1) / (last - first)
 *   error: {status, code, message}, the gateway's OpenAI-shaped error where there is one
 *
 * Resumable (`resumable: true`, sent as `X-Resumable: 1`): the gateway numbers the events and keeps
 * the answer coming for its resume window. If the connection breaks mid-stream (a phone on a train),
 * this resumes by itself: GET /v1/streams/{X-Stream-Id} with X-Stream-Token and Last-Event-ID, with
 * backoff, for up to `resumeWindowMs`. Events are taken once each, by id: no text is duplicated.
 *
 * Stop: abort the `signal`'s AbortController. The fetch and its connection
 * close at once (the gateway then closes the upstream; a resumable stream is
 * sent DELETE /v1/streams/{id}, as its upstream would otherwise run on for the
 * window); the result has aborted: true and neither onDone nor onError is called.
 */
export async function streamChat({ url, body, headers = {}, signal, onOpen, onToken, onEvent, onDone,
                                   onError, onReconnecting, onResumed, resumable = false,
                                   resumeWindowMs = 30000, fetch: fetchImpl = globalThis.fetch,
                                   sleep = abortableSleep }) {
  const started = now();
  let firstAt = 0;
  let lastAt = 0;
  const stats = { ttftMs: null, tokens: 0, tokensPerSecond: 0, elapsedMs: 0 };
  const result = { ok: false, aborted: false, status: 0, arm: null, requestId: null, text: "", usage: null,
                   error: null, stats, streamId: null, resumes: 0 };
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
      headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...headers,
                 ...(resumable ? { "X-Resumable": "1" } : {}) },
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

  // A resumable stream: where to resume it, and how to stop it.
  const streamId = response.headers.get("X-Stream-Id");
  const streamToken = response.headers.get("X-Stream-Token");
  const streamUrl = streamId && streamToken ? `${apiBase(url)}/v1/streams/${encodeURIComponent(streamId)}` : null;
  result.streamId = streamUrl ? streamId : null;
  let ended = false; // a terminal event arrived: `done`, [DONE] or an error
  if (streamUrl && signal) {
    // Stop must stop the upstream too, not only this connection (a resumable one outlives it).
    signal.addEventListener("abort", () => {
      if (ended) return;
      fetchImpl(streamUrl, { method: "DELETE", headers: { ...headers, "X-Stream-Token": streamToken },
                             keepalive: true }).catch(() => {});
    }, { once: true });
  }

  let failure = null;
  let lastId = 0; // the id of the last event taken: a resume asks for what follows it
  const handle = (event) => {
    if (streamUrl && event.id !== null) {
      const id = Number(event.id);
      if (id <= lastId) return; // already taken (never expected: the gateway replays from Last-Event-ID)
      lastId = id;
    }
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

  // Read one response to its end; the error that broke it, or null.
  const consume = async (body) => {
    const parser = new SSEParser();
    const reader = body.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const event of parser.feed(value)) handle(event);
      }
      for (const event of parser.close()) handle(event);
    } catch (exc) {
      return { code: "stream_interrupted", message: `the connection broke mid-stream: ${(exc && exc.message) || exc}` };
    }
    return ended ? null : { code: "stream_interrupted", message: "the stream ended without its final event" };
  };

  let broken = await consume(response.body);
  let resumeUntil = 0;
  let attempt = 0;
  while (broken && streamUrl && !(signal && signal.aborted)) {
    // Resume: back off (250 ms, doubling to 2 s), then ask for the events after the last one taken.
    if (attempt === 0) resumeUntil = now() + resumeWindowMs;
    if (now() >= resumeUntil) break;
    attempt += 1;
    if (onReconnecting) onReconnecting({ attempt, error: broken });
    await sleep(Math.min(2000, 250 * 2 ** Math.min(attempt - 1, 3)), signal);
    if (signal && signal.aborted) break;
    let resumed;
    try {
      resumed = await fetchImpl(streamUrl, {
        method: "GET",
        headers: { ...headers, Accept: "text/event-stream", "X-Stream-Token": streamToken,
                   "Last-Event-ID": String(lastId) },
        signal,
      });
    } catch (exc) {
      broken = { code: "network_error", message: String((exc && exc.message) || exc) };
      continue; // still offline: try again
    }
    if (!resumed.ok) {
      let text = "";
      try {
        text = await resumed.text();
      } catch {
        // the status says enough
      }
      broken = httpError(resumed.status, text); // 404: the stream expired or is not ours
      break;
    }
    result.resumes += 1;
    attempt = 0;
    if (onResumed) onResumed({ attempt: result.resumes });
    broken = await consume(resumed.body);
  }
  if (signal && signal.aborted) return finish(null);
  if (broken) return finish({ status: response.status, ...broken });
  if (failure) return finish(failure);
  return finish(null);
}

/** The part of a chat endpoint's URL before /v1/: where /v1/streams/{id} lives too. */
function apiBase(url) {
  const at = String(url).indexOf("/v1/");
  return at === -1 ? "" : String(url).slice(0, at);
}

function abortableSleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
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
