"""Progress of long work on stderr: a bar on a terminal, plain lines when asked for elsewhere.

stdout carries the commands' machine output (JSON, tables, files on ``-``),
so progress never goes there. By default a bar is drawn only when stderr is
a terminal; ``--progress`` forces it, as throttled plain lines when stderr
is a file or a pipe (a log keeps them readable, no control codes).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO

#: Seconds between two plain progress lines.
LINE_INTERVAL = 5.0


class Progress(Protocol):
    """What long work reports to: ``advance`` after each finished piece."""

    def advance(self, count: int = 1) -> None: ...


class _Silent:
    def advance(self, count: int = 1) -> None:
        del count


SILENT: Progress = _Silent()


class _Lines:
    """Plain ``label: done/total unit (pct), rate unit/s`` lines, at most one per interval, and a final one."""

    def __init__(self, label: str, total: int | None, unit: str, stream: TextIO):
        self.label, self.total, self.unit, self.stream = label, total, unit, stream
        self.done = 0
        self.started = self.last = time.perf_counter()

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self.last >= LINE_INTERVAL:
            self.last = now
            self.write()

    def write(self) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        of = f"/{self.total:,}" if self.total is not None else ""
        pct = f" ({self.done / self.total:.0%})" if self.total else ""
        print(f"{self.label}: {self.done:,}{of} {self.unit}{pct}, {self.done / elapsed:,.0f} {self.unit}/s, "
              f"{elapsed:.0f}s", file=self.stream, flush=True)


def wanted(force: bool = False, stream: TextIO | None = None) -> bool:
    """Show progress: when forced, else only when stderr is a terminal."""
    stream = stream or sys.stderr
    return force or bool(getattr(stream, "isatty", lambda: False)())


@contextmanager
def progress(label: str, total: int | None, unit: str = "reviews", enabled: bool = True,
             stream: TextIO | None = None) -> Iterator[Progress]:
    """A progress reporter for ``total`` units of work (``None``: unknown), or a silent one."""
    stream = stream or sys.stderr
    if not enabled:
        yield SILENT
        return
    if not getattr(stream, "isatty", lambda: False)():
        lines = _Lines(label, total, unit, stream)
        try:
            yield lines
        finally:
            lines.write()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TaskProgressColumn, \
        TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
               TaskProgressColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with RichProgress(*columns, console=Console(file=stream), transient=False) as bar:
        task = bar.add_task(label, total=total, rate="")
        started = time.perf_counter()

        class _Rated:
            def advance(self, count: int = 1) -> None:
                bar.advance(task, count)
                done = bar.tasks[0].completed
                bar.update(task, rate=f"{done / max(time.perf_counter() - started, 1e-9):,.0f} {unit}/s")

        yield _Rated()
