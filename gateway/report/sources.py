"""The report's inputs resolved to files DuckDB can read: paths, globs of
rotated files, stdin and binary streams (spooled to a temp file), split by
compression.  gzip is recognised by its magic bytes, never by the name."""

from __future__ import annotations

import glob
import gzip
import os
import shutil
import sys
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from .errors import ReportError

_GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Inputs:
    names: list[str] = field(default_factory=list)      # display names, in order
    plain: list[str] = field(default_factory=list)
    gzip: list[str] = field(default_factory=list)
    display: dict[str, str] = field(default_factory=dict)  # file DuckDB reads -> display name


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _spool(stream: IO[bytes], spool_dir: str, n: int) -> str:
    """Copy a stream (stdin, a BytesIO) to a file: DuckDB reads files."""
    path = os.path.join(spool_dir, f"stream-{n}")
    with open(path, "wb") as out:
        shutil.copyfileobj(stream, out, 1 << 20)
    return path


def _expand(src: str) -> list[str]:
    """A path as given, or the sorted files a glob pattern matches."""
    if os.path.exists(src) or not glob.has_magic(src):
        return [src]
    matches = sorted(p for p in glob.glob(src) if os.path.isfile(p))
    if not matches:
        raise ReportError(f"no file matches {src!r}", 1)
    return matches


def resolve(sources: Iterable[Any], spool_dir: str) -> Inputs:
    """Resolve ``sources`` (paths, glob patterns, ``-`` for stdin, binary
    streams) into files for DuckDB; unreadable paths are a ReportError."""
    inputs = Inputs()
    for i, src in enumerate(sources):
        if src == "-":
            src = sys.stdin.buffer
        if hasattr(src, "read"):
            name = getattr(src, "name", "<stdin>" if src is sys.stdin.buffer else "<stream>")
            if not isinstance(name, str) or src is sys.stdin.buffer:
                name = "<stdin>" if src is sys.stdin.buffer else "<stream>"
            paths = [(_spool(src, spool_dir, i), name)]
        else:
            paths = [(p, p) for p in _expand(os.fspath(src))]
        for path, name in paths:
            try:
                gz = _is_gzip(path)
            except OSError as e:
                raise ReportError(f"cannot open {name}: {e.strerror or e}", 1) from None
            (inputs.gzip if gz else inputs.plain).append(path)
            inputs.display[path] = name
            inputs.names.append(name)
    return inputs


def salvage_gzip(inputs: Inputs, spool_dir: str) -> list[str]:
    """Decompress every gzip input in Python, keeping the complete lines
    before any corruption (a truncated rotation, a copy cut short), so that
    one bad file does not lose the others.  Returns one problem per damaged
    file; afterwards every input is plain."""
    problems = []
    for n, path in enumerate(inputs.gzip):
        out_path = os.path.join(spool_dir, f"gunzip-{n}")
        lines = 0
        with open(out_path, "wb") as out, gzip.open(path, "rb") as f:
            try:
                for line in f:  # a line cut by the damage is never yielded
                    out.write(line if line.endswith(b"\n") else line + b"\n")
                    lines += 1
            except (EOFError, gzip.BadGzipFile, OSError, zlib.error) as e:
                problems.append(f"{inputs.display[path]}: unreadable input after line {lines} "
                                f"({type(e).__name__}: {e})")
        inputs.display[out_path] = inputs.display[path]
        inputs.plain.append(out_path)
    inputs.gzip = []
    return problems
