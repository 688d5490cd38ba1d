"""Progress for long commands (produce, demo, rebuild, preview, dlq replay), drawn by rich on stderr so that
stdout stays clean for data; nothing is drawn when stderr is not a terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second (rich's own speed column counts bytes)."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f}/s" if task.speed else "", style="progress.data.speed")


@contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """Yields `show(done)`: how many of `total` are done (total None: a count and a rate)."""
    console = Console(stderr=True)
    columns: list[ProgressColumn] = [TextColumn("{task.description}")]
    columns += [BarColumn(), MofNCompleteColumn()] if total else [SpinnerColumn(), TextColumn("{task.completed:,}")]
    columns += [RateColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)

        def show(done: int) -> None:
            bar.update(task, completed=done)

        yield show
