// The page the hook test drives: a chat component using useChatStream, in
// StrictMode (effects run, clean up and run again: cleanup must be right),
// and a button that unmounts it mid-stream.
import { createElement as h, StrictMode, useState } from "react";
import { createRoot } from "react-dom/client";

import { useChatStream } from "../../gateway/static/useChatStream.js";

const params = new URLSearchParams(location.search);
const headers = JSON.parse(params.get("headers") || "{}");

function Chat() {
  const chat = useChatStream({ url: `${params.get("gateway")}/v1/stream/chat`, headers });
  return h("div", null,
    h("button", { id: "send", onClick: () => chat.send({ prompt: "hi", model: params.get("model") || undefined }) },
      "Send"),
    h("button", { id: "stop", onClick: chat.stop }, "Stop"),
    h("p", null, h("span", { id: "status" }, chat.status), " ",
      h("span", { id: "tokens" }, chat.stats ? chat.stats.tokens : 0), " ",
      h("span", { id: "arm" }, chat.arm || ""), " ", h("span", { id: "request-id" }, chat.requestId || "")),
    h("div", { id: "answer" }, chat.text));
}

function App() {
  const [shown, setShown] = useState(true);
  return h("div", null,
    h("button", { id: "unmount", onClick: () => setShown(false) }, "Unmount"),
    shown ? h(Chat) : h("p", { id: "gone" }, "unmounted"));
}

createRoot(document.getElementById("root")).render(h(StrictMode, null, h(App)));
