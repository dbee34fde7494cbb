"""gateway/logsink.py: every line written reaches the file, whole and in order, whatever the loop does."""

from __future__ import annotations

import asyncio
import os
import select
from pathlib import Path

import pytest

from gateway import logsink
from gateway.logsink import QueueWriter


def sink(tmp_path: Path) -> tuple[QueueWriter, Path, int]:
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    return QueueWriter(fd), path, fd


def test_lines_written_on_a_loop_are_all_in_the_file_after_close(tmp_path: Path) -> None:
    writer, path, fd = sink(tmp_path)

    async def log() -> None:
        for i in range(100):
            writer.write(b"%d\n" % i)
            await asyncio.sleep(0)

    asyncio.run(log())
    writer.close()
    os.close(fd)
    assert path.read_bytes() == b"".join(b"%d\n" % i for i in range(100))


def test_a_line_written_without_a_loop_goes_to_the_thread_at_once(tmp_path: Path) -> None:
    writer, path, fd = sink(tmp_path)
    writer.write(b"now\n")
    assert writer._pending == []  # handed over, not waiting for a timer that no loop would run
    writer.close()
    os.close(fd)
    assert path.read_bytes() == b"now\n"


def test_lines_left_by_a_loop_that_stopped_go_with_the_next_loops(tmp_path: Path) -> None:
    writer, path, fd = sink(tmp_path)

    async def write(line: bytes) -> None:
        writer.write(line)

    asyncio.run(write(b"first\n"))  # the loop ends before its hand-over timer runs
    asyncio.run(write(b"second\n"))
    assert writer._pending == [b"first\n", b"second\n"]  # both still waiting, on the live loop's timer

    async def later() -> None:
        writer.write(b"third\n")
        await asyncio.sleep(logsink.HAND_OVER_S * 3)
        assert writer._pending == []

    asyncio.run(later())
    writer.close()
    os.close(fd)
    assert path.read_bytes() == b"first\nsecond\nthird\n"


def test_each_write_is_whole_lines_of_at_most_pipe_buf_bytes(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[bytes] = []
    real_write = os.write

    def recording_write(fd: int, data: bytes) -> int:
        sizes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(logsink.os, "write", recording_write)
    writer, path, fd = sink(tmp_path)
    lines = [b"x" * 700 + b"\n"] * 20 + [b"y" * (select.PIPE_BUF + 10) + b"\n"] + [b"z\n"] * 3

    async def log() -> None:
        for line in lines:
            writer.write(line)

    asyncio.run(log())
    writer.close()
    os.close(fd)
    assert path.read_bytes() == b"".join(lines)
    assert all(chunk.endswith(b"\n") for chunk in sizes)
    assert all(len(chunk) <= select.PIPE_BUF for chunk in sizes if not chunk.startswith(b"y"))
    assert [b"y" * (select.PIPE_BUF + 10) + b"\n"] == [chunk for chunk in sizes if b"y" in chunk]  # alone
    assert len(sizes) < len(lines)  # several lines to a write
