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
import select
import threading


class QueueWriter:
    """A file-like sink whose writes go to a thread, so logging never blocks the loop.

    Lines leave in single unbuffered write()s of whole lines, at most PIPE_BUF
    bytes each (a longer line alone): with several worker processes appending
    to one file (O_APPEND) or one pipe, their lines never interleave. The queue is unbounded on
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
        carried: list[bytes | None] = []  # what did not fit in the last write
        while (line := carried.pop() if carried else self._queue.get()) is not None:
            # The lines queued meanwhile go out with it, in one write of at most PIPE_BUF bytes:
            # under load, one wake-up and one syscall for several lines instead of one each.
            lines, size = [line], len(line)
            while size < select.PIPE_BUF:
                try:
                    line = self._queue.get_nowait()
                except queue.Empty:
                    break
                if line is None or size + len(line) > select.PIPE_BUF:
                    carried.append(line)
                    break
                lines.append(line)
                size += len(line)
            view = memoryview(b"".join(lines))
            while view:
                view = view[os.write(self._fd, view):]

    def close(self) -> None:
        """Write what is queued, then stop the thread. Closing twice is harmless."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=10)
