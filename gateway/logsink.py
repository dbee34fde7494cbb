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

import os
import queue
import threading


class QueueWriter:
    """A file-like sink whose writes go to a thread, so logging never blocks the loop.

    Each line leaves in a single unbuffered write(): with several worker
    processes appending to one file (O_APPEND) or one pipe (lines are under
    PIPE_BUF), their lines never interleave. The queue is unbounded on
    purpose: a stuck disk costs memory, never a log line.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="gateway-log", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        self._queue.put(data)

    def flush(self) -> None:  # every line is written as soon as the thread gets to it
        pass

    def _run(self) -> None:
        while (line := self._queue.get()) is not None:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]

    def close(self) -> None:
        """Write what is queued, then stop the thread. Closing twice is harmless."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=10)
