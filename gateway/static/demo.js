// The demo page: one prompt, one streaming answer that survives a dropped connection, Stop that really stops.
import { frameBatcher, streamChat } from "./stream.js";

const $ = (id) => document.getElementById(id);
const form = $("ask");
const stopButton = $("stop");
let controller = null;

function setStatus(status) {
  const live = status === "streaming" || status === "reconnecting...";
  $("status").textContent = status;
  $("output").classList.toggle("streaming", live);
  $("send").disabled = live;
  stopButton.disabled = !live;
}

function showError(error) {
  const box = $("error");
  box.hidden = !error;
  box.textContent = error ? `${error.status ? `HTTP ${error.status} ` : ""}${error.code}: ${error.message}` : "";
}

const show = (id, text) => {
  const node = $(id);
  if (node.textContent !== text) node.textContent = text; // unchanged text: no DOM update
};

async function send(event) {
  event.preventDefault();
  controller?.abort();
  controller = new AbortController();
  const text = document.createTextNode("");
  $("answer").replaceChildren(text);
  for (const id of ["ttft", "tokens", "rate", "arm", "request-id"]) show(id, "-");
  showError(null);
  setStatus("streaming");

  // Everything the stream changes on the page is drawn in one frame callback.
  let stats = null;
  let meta = null;
  let ending = null; // the final status, shown in the same frame as the last tokens and counts
  const frame = frameBatcher((tokens) => {
    if (tokens) text.appendData(tokens);
    if (stats) {
      show("ttft", stats.ttftMs === null ? "-" : `${Math.round(stats.ttftMs)} ms`);
      show("tokens", String(stats.tokens));
      show("rate", stats.tokens > 1 ? stats.tokensPerSecond.toFixed(1) : "-");
    }
    if (meta) {
      show("arm", meta.arm || "-");
      show("request-id", meta.requestId || "-");
    }
    if (ending) setStatus(ending);
  });

  const body = { prompt: $("prompt").value };
  if ($("model").value) body.model = $("model").value;
  const result = await streamChat({
    url: "/v1/stream/chat",
    body,
    resumable: true, // a dropped connection (a phone on a train) resumes where it broke off
    signal: controller.signal,
    onReconnecting: () => setStatus("reconnecting..."),
    onResumed: () => setStatus("streaming"),
    onOpen: (info) => {
      meta = info;
      frame.request();
    },
    onToken: (token, latest) => {
      stats = latest;
      frame.push(token);
    },
  });
  stats = result.stats;
  ending = result.aborted ? "stopped" : result.ok ? "done" : "error";
  frame.request();
  showError(result.error);
}

async function loadModels() {
  try {
    const response = await fetch("/v1/models");
    const { data } = await response.json();
    for (const { id } of data) $("model").append(new Option(id, id));
  } catch {
    // the default route still works
  }
}

form.addEventListener("submit", send);
stopButton.addEventListener("click", () => controller?.abort());
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
});
loadModels();
