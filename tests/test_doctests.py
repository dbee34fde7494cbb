"""The examples in the package's docstrings run: a public API documented by examples that work."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import gateway

MODULES = sorted(name for _, name, _ in pkgutil.walk_packages(gateway.__path__, "gateway.")
                 if not name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
