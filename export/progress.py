"""Progress display for long steps, on stderr so stdout stays for results."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

_console = Console(stderr=True)


def progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_console,
        transient=not sys.stderr.isatty(),
        disable=False,
    )


def status(message: str):
    """A spinner for one long step with no natural count (an export, an engine build)."""
    return _console.status(message)


def info(message: str) -> None:
    _console.print(message, highlight=False, markup=False, soft_wrap=True)  # "[tensorrt]" is text, not a style
