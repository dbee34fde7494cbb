"""System tools the browser and nginx tests drive (installed by tests/bootstrap.sh).

A missing tool skips its tests on a developer's machine, but fails them in CI
(CI=true): there a skip would hide that the path was never tested."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def require(name: str, path: str | None = None) -> str:
    """The tool's path; skip (fail under CI=true) when it is not installed."""
    found = path if path is not None and Path(path).exists() else shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed: run `bash tests/bootstrap.sh`"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
