"""One rich progress bar style for all long work (training, caching, chains)."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(enabled: bool = True, console: Console | None = None) -> Progress:
    """A Progress whose tasks may carry a `stats` field shown at the right."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
        disable=not enabled, console=console or Console(stderr=True), transient=False,
    )
