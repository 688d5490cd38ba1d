"""Errors of the command line."""

from __future__ import annotations

from tierflow.pipeline.errors import TierflowError


class CliError(TierflowError):
    """A user-facing failure: printed without a traceback, exit status attached."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status
