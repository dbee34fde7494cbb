"""The log's writer thread: lines leave the event loop at once, and reach the file in order.

    >>> import os, tempfile
    >>> fd, path = tempfile.mkstemp()
    >>> sink = QueueWriter(fd)
    >>> sink.write(b'{"a":1}\\n'); sink.close()
    >>> open(path, "rb").read()
    b'{"a":1}\\n'
    >>> os.close(fd); os.remove(path)
"""

from __future__ import annotations

import asyncio
import os
import queue
import select
import threading

HAND_OVER_S = 0.05  # lines written on the event loop reach the thread together, this often at most


class QueueWriter:
    """A file-like sink whose writes go to a thread, so logging never blocks the loop.

    On an event loop, the lines of a few milliseconds go to the thread together:
    waking a thread per line costs the loop more than rendering the line (the
    woken thread competes for the GIL). The thread writes whole lines, several
    to a write() of at most PIPE_BUF bytes (a longer line alone): with several
    worker processes appending to one file (O_APPEND) or one pipe, their lines
    never interleave. The queue is unbounded on purpose: a stuck disk costs
    memory, never a log line; `close` writes every line written before it.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending: list[bytes] = []  # written on the loop, not yet handed to the thread
        self._scheduled_on: asyncio.AbstractEventLoop | None = None  # the loop whose timer will hand them over
        self._queue: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="gateway-log", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        """From the loop's thread, or from a thread without a loop (its line goes at once)."""
        self._pending.append(data)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: straight to the writer
            self._hand_over()
            return
        if self._scheduled_on is not loop:  # none scheduled, or on a loop that stopped before it ran
            self._scheduled_on = loop
            loop.call_later(HAND_OVER_S, self._hand_over)

    def flush(self) -> None:  # every line is written as soon as the thread gets to it
        pass

    def _hand_over(self) -> None:
        self._scheduled_on = None
        if self._pending:
            lines, self._pending = self._pending, []
            self._queue.put(lines)

    def _run(self) -> None:
        while (lines := self._queue.get()) is not None:
            start = 0
            while start < len(lines):
                size, end = len(lines[start]), start + 1
                while end < len(lines) and size + len(lines[end]) <= select.PIPE_BUF:
                    size += len(lines[end])
                    end += 1
                view = memoryview(b"".join(lines[start:end]))
                while view:
                    view = view[os.write(self._fd, view):]
                start = end

    def close(self) -> None:
        """Write what is written so far, then stop the thread. Closing twice is harmless."""
        if self._thread.is_alive():
            self._hand_over()
            self._queue.put(None)
            self._thread.join(timeout=10)
