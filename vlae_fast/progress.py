"""One way to show long work (training, caching, chains): a rich progress bar in a terminal, plain
periodic lines elsewhere (nohup, CI, a pipe), where a bar would appear once, truncated, at the end.

Both go to stderr, so stdout holds only a command's results (and `--json` stays parseable).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

PLAIN_EVERY = 10.0  # seconds: the most often a plain line is printed (new figures), ...
PLAIN_HEARTBEAT = 60.0  # ... and the longest silence (no new figures, still working)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class PlainProgress:
    """The part of rich's Progress the library uses (add_task, update), printing one plain line per
    update worth reading: new figures (at most every PLAIN_EVERY s), a heartbeat, and the end.

    A line: `train  step 50/4000  loss=... KL1=...  2.95 steps/s  ETA 22m18s`."""

    def __init__(self, console: Console, every: float = PLAIN_EVERY, heartbeat: float = PLAIN_HEARTBEAT):
        self.console, self.every, self.heartbeat = console, every, heartbeat
        self.tasks: list[dict] = []

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        now = time.perf_counter()
        self.tasks.append({"description": description, "total": total, "completed": completed, "start": completed,
                           "t0": now, "stats": fields.get("stats", ""), "fresh": False, "printed": None,
                           "done": False})
        return len(self.tasks) - 1

    def update(self, task_id: int, completed: float | None = None, advance: float | None = None,
               stats: str | None = None, **_) -> None:
        t = self.tasks[task_id]
        if stats is not None and stats != t["stats"]:
            t["stats"], t["fresh"] = stats, True
        if advance is not None:
            t["completed"] += advance
        if completed is not None:
            t["completed"] = completed
        now = time.perf_counter()
        since = now - t["printed"] if t["printed"] is not None else float("inf")
        finished = t["total"] is not None and t["completed"] >= t["total"]
        if finished and not t["done"]:
            t["done"] = True
            self._line(t, now)
        elif not finished and t["completed"] > t["start"] and (
                (t["fresh"] and since >= self.every) or since >= self.heartbeat):
            self._line(t, now)

    def _line(self, t: dict, now: float) -> None:
        elapsed = now - t["t0"]
        rate = (t["completed"] - t["start"]) / elapsed if elapsed > 0 else 0.0
        total = t["total"]
        parts = [t["description"], f"step {t['completed']:g}/{total:g}" if total else f"step {t['completed']:g}"]
        if t["stats"]:
            parts.append(t["stats"])
        parts.append(f"{rate:.3g} steps/s")
        if total and rate > 0 and t["completed"] < total:
            parts.append(f"ETA {_duration((total - t['completed']) / rate)}")
        elif total and t["completed"] >= total:
            parts.append(f"done in {_duration(elapsed)}")
        self.console.print("  ".join(parts), highlight=False, markup=False, soft_wrap=True)
        t["printed"], t["fresh"] = now, False


def progress_bar(enabled: bool = True, console: Console | None = None) -> Progress | PlainProgress:
    """A progress display whose tasks may carry a `stats` field: a rich bar in a terminal, else plain lines."""
    console = console or Console(stderr=True)
    if enabled and not console.is_terminal:
        return PlainProgress(console)
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
        disable=not enabled, console=console, transient=False,
    )


@contextmanager
def status(message: str, enabled: bool = True, console: Console | None = None) -> Iterator[None]:
    """Work without steps to count (the final evaluation): a spinner in a terminal, else a start and an
    end line."""
    console = console or Console(stderr=True)
    if not enabled:
        yield
    elif console.is_terminal:
        with console.status(message):
            yield
    else:
        t0 = time.perf_counter()
        console.print(f"{message} ...", highlight=False, markup=False, soft_wrap=True)
        yield
        console.print(f"{message}: done in {_duration(time.perf_counter() - t0)}", highlight=False, markup=False,
                      soft_wrap=True)
