"""The README's SDK examples run, unchanged but for the address, against a real gateway process:
what a user copies from the Quick start works with both official SDKs."""

from __future__ import annotations

import re

import pytest

from gateway.mock import mock_text

from .conftest import ROOT, Gateway

EXAMPLES = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)


def test_the_quick_start_shows_both_sdks() -> None:
    assert [("from openai import" in code, "from anthropic import" in code) for code in EXAMPLES[:2]] == [
        (True, False), (False, True)]


@pytest.mark.parametrize("code", EXAMPLES[:2], ids=["openai", "anthropic"])
def test_a_readme_sdk_example_streams_the_answer(gateway: Gateway, code: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(code.replace("http://127.0.0.1:8080", gateway.url), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith(mock_text(12))
    assert re.search(r"\b(completion|output)_tokens=12\b", printed)  # then the usage, as the SDK reports it
