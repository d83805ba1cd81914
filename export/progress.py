"""Progress display for long steps, on stderr so stdout stays for results.

On a terminal: rich (a spinner for one step, a bar for counted steps), cleared when done. Off a terminal (a CI
log, a redirected stderr) rich draws nothing, so a long run would look hung: there every step says itself in
plain lines instead.
- `status(message)`: "message ..." once the step has run HEARTBEAT_S seconds and "message: done in N s" at its end
  (a quick step, or a refusal, prints nothing: bad input stays one line);
- `progress()`: a line as each counted step starts, "[3/20 12 s] validate model.int8.onnx B=1 S=2048";
- `steps(items, describe)`: the same for a plain loop, each item named by `describe(item)`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

_console = Console(stderr=True)
T = TypeVar("T")
HEARTBEAT_S = 5.0  # off a terminal, a step that runs longer than this says so


def on_terminal() -> bool:
    return _console.is_terminal


def progress() -> Progress | LineProgress:
    """rich's Progress on a terminal; LineProgress (the same calls, one line per step) off it."""
    if not on_terminal():
        return LineProgress()
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_console,
        transient=True,
    )


class LineProgress:
    """The part of rich.progress.Progress the project uses (add_task, update, advance), printing one line each time
    a task's description changes: the step it names has started."""

    def __init__(self) -> None:
        self._tasks: dict[TaskID, dict] = {}

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **_) -> TaskID:
        """A task whose steps are announced by update(description=...): the description given here names none."""
        task = TaskID(len(self._tasks))  # rich's task ids: the same calls work on either progress
        self._tasks[task] = {"description": description, "total": total, "done": 0, "t0": time.perf_counter()}
        return task

    def update(self, task: TaskID, *, description: str | None = None, advance: float | None = None, **_) -> None:
        t = self._tasks[task]
        if advance:
            t["done"] += advance
        if description is not None and description != t["description"]:
            t["description"] = description
            total = f"/{t['total']:g}" if t["total"] is not None else ""
            info(f"[{t['done'] + 1:g}{total} {time.perf_counter() - t['t0']:.0f} s] {description}")

    def advance(self, task: TaskID, advance: float = 1) -> None:
        self._tasks[task]["done"] += advance


def steps(items: Iterable[T], describe: Callable[[T], str]) -> Iterator[T]:
    """Yield `items`, each step named by `describe(item)` as it starts (a bar on a terminal, a line off it)."""
    items = list(items)
    with progress() as bar:
        task = bar.add_task("", total=len(items))
        for item in items:
            bar.update(task, description=describe(item))
            yield item
            bar.advance(task)


@contextmanager
def status(message: str) -> Iterator[None]:
    """One long step with no natural count (an export, an engine build): a spinner on a terminal; off it, a line
    once the step has run HEARTBEAT_S seconds, and one when it ends."""
    if on_terminal():
        with _console.status(message):
            yield
        return
    t0, said = time.perf_counter(), threading.Event()

    def say() -> None:
        said.set()
        info(f"{message} ...")

    timer = threading.Timer(HEARTBEAT_S, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    if said.is_set():  # not reached when the step raised: its error is the line to read
        info(f"{message}: done in {time.perf_counter() - t0:.0f} s")


def info(message: str) -> None:
    _console.print(message, highlight=False, markup=False, soft_wrap=True)  # "[tensorrt]" is text, not a style
