"""The question destructive commands (rebuild, forget) ask before they change anything."""

from __future__ import annotations

import sys

from tierflow.pipeline.cli.errors import CliError

# The exit status of a destructive command that was not confirmed.
EXIT_NOT_CONFIRMED = 4


def confirm(question: str, rerun: str, assume_yes: bool) -> None:
    """Return when confirmed: `assume_yes`, or "y" typed at a terminal; else raise
    (exit 4). `rerun` is the command line that skips the question."""
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise CliError(f"not confirmed: run `{rerun}` to go ahead without a question", EXIT_NOT_CONFIRMED)
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise CliError("not confirmed; nothing changed", EXIT_NOT_CONFIRMED)
