// useChatStream: a React hook over stream.js. A plain ES module that imports
// React: bundle it with your app (or map "react" with an import map).
//
//   const chat = useChatStream({ url: "/v1/stream/chat" });
//   chat.send({ prompt })   starts a stream (stopping any running one); resolves with stream.js's result
//                           (the state shows the end from the next animation frame)
//   chat.stop()             aborts the fetch: the gateway closes the upstream at once
//   chat.text, chat.status ("idle" | "streaming" | "done" | "stopped" | "error"),
//   chat.stats ({ttftMs, tokens, tokensPerSecond, elapsedMs}), chat.arm, chat.requestId, chat.error
//
// Unlike the article's hook it owns a real AbortController, aborts it on
// unmount, never sets state after unmount, and renders at most once per
// animation frame however fast tokens arrive.
import { useCallback, useEffect, useRef, useState } from "react";

import { frameBatcher, streamChat } from "./stream.js";

const IDLE = { text: "", status: "idle", stats: null, arm: null, requestId: null, error: null };

export function useChatStream({ url = "/v1/stream/chat", headers } = {}) {
  const [state, setState] = useState(IDLE);
  const current = useRef(null); // the running stream: {controller, batcher}
  const mounted = useRef(false);

  useEffect(() => {
    mounted.current = true;
    return () => {
      // Unmount: stop the stream and drop any queued frame, so nothing touches state afterwards.
      mounted.current = false;
      const run = current.current;
      current.current = null;
      if (run) {
        run.batcher.cancel();
        run.controller.abort();
      }
    };
  }, []);

  const stop = useCallback(() => {
    if (current.current) current.current.controller.abort();
  }, []);

  const send = useCallback(
    async (body) => {
      if (current.current) {
        current.current.batcher.cancel();
        current.current.controller.abort();
      }
      const controller = new AbortController();
      let text = "";
      let stats = null;
      let meta = {};
      let final = null; // the end state, drawn in a frame like every other update
      // Only the stream still current, in a mounted component, may update state.
      const live = () => mounted.current && current.current === run;
      const batcher = frameBatcher((tokens) => {
        text += tokens;
        if (!live()) return;
        if (final) {
          current.current = null;
          setState(final);
        } else {
          setState((s) => ({ ...s, ...meta, text, stats: stats && { ...stats } }));
        }
      });
      const run = { controller, batcher };
      current.current = run;
      setState({ ...IDLE, status: "streaming" });

      const result = await streamChat({
        url,
        body,
        headers,
        signal: controller.signal,
        onOpen: ({ arm, requestId }) => {
          meta = { arm, requestId };
          batcher.request();
        },
        onToken: (token, latest) => {
          stats = latest;
          batcher.push(token);
        },
      });
      if (!live()) return result; // stopped by unmount or replaced by a newer send
      final = {
        text: result.text,
        status: result.aborted ? "stopped" : result.ok ? "done" : "error",
        stats: { ...result.stats },
        arm: result.arm,
        requestId: result.requestId,
        error: result.error,
      };
      batcher.request();
      return result;
    },
    [url, headers],
  );

  return { ...state, send, stop };
}
