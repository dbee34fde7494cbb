"""gateway/static/stream.js unit tests run by node's own runner (tests/js/*.test.mjs)."""

from __future__ import annotations

import subprocess

from .conftest import ROOT
from .tools import require


def test_stream_js_unit_tests_pass_under_node() -> None:
    node = require("node")
    result = subprocess.run([node, "--test", "tests/js/"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout and "# pass 0\n" not in result.stdout
