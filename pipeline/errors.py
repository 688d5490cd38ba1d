"""User-facing errors shared by the CLI and its commands."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing failure: printed without a traceback, exit status attached."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status
