"""The report's one exception: a user-facing error with an exit code."""

from __future__ import annotations


class ReportError(Exception):
    """A user-facing error; ``main`` prints it and exits with ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code
