"""A helper process for the edge tests: many client connections, and how the gateway ends them.

    python -m tests.conn_holder PORT COUNT [--trickle] [--watch-s S]

It raises its own open-file limit (one process cannot hold 20,000 sockets
beside pytest's own files under a 20,000 limit, so tests start several),
connects in paced batches (a burst past the listen backlog would only turn
into SYN retries, a second each), and prints one JSON line once every connection is made. Then, for
`--watch-s` seconds, it records when and how the gateway ended each one: a
503 (the connection cap), a 408 (the read timeout), a plain close or a reset.
With `--trickle` it sends one byte of a request head per second on every
open connection, like a slowloris client. It prints a JSON summary and exits
on its own when the watch is over: it never outlives the test.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import time

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n" + b"X-Pad: " \
    + b"a" * 200 + b"\r\n\r\n"
BATCH = 50


def connect_all(port: int, count: int) -> tuple[dict[socket.socket, float], int]:
    """Connect `count` sockets; returns each connected socket with when it connected, and the failures."""
    opened: dict[socket.socket, float] = {}
    failed = 0
    pause = 0.02  # faster than the gateway gets to accept them, and its listen queue overflows
    for start in range(0, count, BATCH):
        began = time.monotonic()
        batch = []
        for _ in range(min(BATCH, count - start)):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            batch.append(sock)
        with selectors.DefaultSelector() as waiting:
            for sock in batch:
                waiting.register(sock, selectors.EVENT_WRITE)
            deadline = time.monotonic() + 15
            pending = len(batch)
            while pending and time.monotonic() < deadline:
                for key, _ in waiting.select(timeout=0.5):
                    waiting.unregister(key.fileobj)
                    pending -= 1
        for sock in batch:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                opened[sock] = time.monotonic()
            else:
                failed += 1
                sock.close()
        # A SYN dropped at a full listen queue is retried a second later: slow down when that happens.
        pause = min(0.2, pause * 2) if time.monotonic() - began > 0.5 else max(0.01, pause * 0.98)
        time.sleep(pause)
    return opened, failed


def kind_of(sock: socket.socket) -> str:
    try:
        data = sock.recv(4096)
    except ConnectionResetError:
        return "reset"
    if not data:
        return "eof"
    status = data.split(b"\r\n", 1)[0].split(b" ")
    return status[1].decode() if len(status) > 1 and data.startswith(b"HTTP/") else "other"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--trickle", action="store_true")
    parser.add_argument("--watch-s", type=float, default=10.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    began = time.monotonic()
    opened, failed = connect_all(args.port, args.count)
    print(json.dumps({"connected": len(opened), "failed": failed, "connect_s": round(time.monotonic() - began, 2)}),
          flush=True)

    ended: dict[str, list[float]] = {}  # kind -> seconds from connecting to the gateway ending it
    with selectors.DefaultSelector() as selector:
        for sock in opened:
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + args.watch_s
        next_byte, sent = time.monotonic(), 0
        while opened and time.monotonic() < deadline:
            if args.trickle and time.monotonic() >= next_byte and sent < len(HEAD):
                for sock in list(opened):
                    try:
                        sock.send(HEAD[sent:sent + 1])
                    except OSError:
                        pass  # ended by the gateway: the read below says how
                sent, next_byte = sent + 1, next_byte + 1.0
            timeout = min(deadline, next_byte if args.trickle else deadline) - time.monotonic()
            for key, _ in selector.select(timeout=max(0.0, timeout)):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                kind = kind_of(sock)
                ended.setdefault(kind, []).append(time.monotonic() - opened.pop(sock))
                selector.unregister(sock)
                sock.close()
    for sock in opened:
        sock.close()
    print(json.dumps({
        "still_open": len(opened),
        "ended": {kind: {"count": len(times), "min_s": round(min(times), 3), "max_s": round(max(times), 3)}
                  for kind, times in ended.items()},
    }), flush=True)


if __name__ == "__main__":
    main()
