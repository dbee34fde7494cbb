"""A TCP relay whose connections a test can cut at once: the network dropping under a browser.

Chromium's offline emulation (Playwright's `context.set_offline`) fails new
requests but leaves a response already streaming alone, so a test puts this
relay between the browser and the server, goes offline, and cuts what is open.
"""

from __future__ import annotations

import socket
import struct
import threading

from .edge import free_port


class Cuttable:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source)
            self._close(sink)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, as a drop
            sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked reading it (close alone would not)
        except OSError:
            pass
        sock.close()

    def cut(self, *, then_to: int | None = None) -> None:
        """Reset every connection open through the relay; new ones are still relayed (to port `then_to`,
        if given: the client's next connection lands on another server, as behind a balancer)."""
        if then_to is not None:
            self.target_port = then_to
        with self._lock:
            victims = list(self._open)
        for sock in victims:
            self._close(sock)
        self.cuts += 1

    def stop(self) -> None:
        self._server.close()
        self.cut()
