"""The DuckDB connection of one report run: the optional extra imported with
an install hint, and a private temp directory so big logs spill to disk."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from .errors import ReportError

INSTALL_HINT = "pip install 'llm-gateway[report]'"
# From a checkout the same extra is installed with: pip install -e '.[report]'
_MISSING = (f"gateway report needs the 'report' extra (DuckDB, SciPy, matplotlib): {INSTALL_HINT}"
            " (from a checkout: pip install -e '.[report]')")


def require_extra() -> None:
    """Fail with one line naming the install command if the extra is missing.
    Called before any input is read, so a missing extra costs nothing."""
    try:
        import duckdb  # noqa: F401
        import numpy  # noqa: F401
        import scipy.special  # noqa: F401
        import scipy.stats  # noqa: F401
    except ImportError:
        raise ReportError(_MISSING, 2) from None


class Engine:
    """One in-memory DuckDB database per report run.

    Threads are left at DuckDB's default (all cores).  ``temp_directory``
    is a fresh directory under the system temp dir, removed on ``close``:
    when a table outgrows ``memory_limit`` (DuckDB's default, 80 % of RAM,
    unless given) DuckDB spills it there instead of failing.
    """

    def __init__(self, memory_limit: str | None = None) -> None:
        require_extra()
        import duckdb

        self.tmp = tempfile.mkdtemp(prefix="gateway-report-")
        self.con: Any = duckdb.connect(":memory:")
        self.con.execute("SET temp_directory = ?", [self.tmp])
        # TIMESTAMPTZ casts honour the offset written in the log; UTC only
        # matters for the rendering of values, which we do in Python.
        self.con.execute("SET TimeZone = 'UTC'")
        # DuckDB draws a progress bar on a terminal for queries over 2 s; the
        # report's stdout and stderr are its own
        self.con.execute("SET enable_progress_bar = false")
        if memory_limit is not None:
            self.con.execute("SET memory_limit = ?", [memory_limit])

    def close(self) -> None:
        try:
            self.con.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
