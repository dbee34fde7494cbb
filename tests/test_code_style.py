"""The code stays lint- and type-clean: the checks run with the suite, not on someone's memory."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT

RUFF_RULES = ["--select", "E,F,W,B,UP,I", "--ignore", "B905", "--line-length", "120"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_finds_nothing() -> None:
    result = run("ruff", "check", *RUFF_RULES, "gateway", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing_in_the_package() -> None:
    result = run("mypy", "gateway")
    assert result.returncode == 0, result.stdout + result.stderr
