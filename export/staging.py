"""A build folder whose report always describes exactly the files beside it.

A run works in `<out>/.staging-<random>/`, holding an exclusive lock on `.staging-*/.lock` for its whole
life, and moves the finished set into `<out>` at the end: the previous set stays untouched until then.
The swap removes the old report first and writes the new report.json last, so at no moment does a
report sit beside artifacts of another run. What later runs reuse (`timing.cache`, plans whose sidecar
matches) is linked into the staging folder before the engine stage and survives the swap.

Staging folders of dead runs (killed, even by SIGKILL) are removed by the next run: the kernel drops a
dead process's lock, so a `.staging-*` folder whose lock can be taken belongs to nobody. Only folders
with our prefix and our lock file are touched.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from export.errors import UsageError
from export.report import REPORT_JSON, REPORT_MD, TIMING_CACHE

PREFIX = ".staging-"
LOCK = ".lock"
KEEP = (TIMING_CACHE,)  # reused by later runs; never removed by a swap
# Files a build writes; what the previous set had of these and the new set lacks is removed at the swap.
OURS = ("model*.onnx", "model*.onnx.data", "model*.plan", "model*.plan.json", "bench")


class BuildFolder:
    """`with BuildFolder(out) as bf:` work in `bf.stage`, then `bf.commit()`; without commit, out is untouched."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.created = False
        self.stage: Path | None = None
        self._lock_fd: int | None = None

    def __enter__(self) -> "BuildFolder":
        self.created = not self.out.exists()
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out {self.out} is a file, not a folder; pass a folder path")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            with folder_lock(self.out):  # no other run cleans up or swaps while this staging folder is born
                remove_dead_stagings(self.out)
                self.stage = Path(tempfile.mkdtemp(prefix=PREFIX, dir=self.out))
                self._lock_fd = os.open(self.stage / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except BaseException as e:
            self.__exit__()  # nothing half-made stays behind, Ctrl-C included
            if isinstance(e, OSError):
                raise UsageError(f"--out {self.out} is not writable ({e.strerror}); pass a folder you can write "
                                 "to") from None
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        if self.created and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()  # a run that produced nothing leaves no empty folder it made

    def reuse(self, *names: str) -> None:
        """Link (or copy) files of the previous set that a stage may reuse into the staging folder."""
        for name in names:
            src, dst = self.out / name, self.stage / name
            if src.is_file() and not src.is_symlink() and not dst.exists():
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)

    def commit(self, described: set[str], on_done: Callable[[], None] | None = None) -> list[str]:
        """Move the finished set into place: the report, the top-level names it describes (`described`,
        e.g. "model.onnx", "bench") and KEEP; anything else in the staging folder (a reused plan the run
        did not keep, say) is dropped with it. Returns the names moved. Ctrl-C waits until it is done, and
        `on_done` runs before it is let through (so an interrupt message can say the new set is in place).
        Other runs into the same folder wait for the swap (the folder lock)."""
        with _no_sigint(), folder_lock(self.out):
            old_report = self.out / REPORT_JSON
            old_report.unlink(missing_ok=True)  # first: no report may describe a half-swapped folder
            (self.out / REPORT_MD).unlink(missing_ok=True)
            wanted = set(described) | {REPORT_JSON, REPORT_MD, *KEEP}
            new = {p.name for p in self.stage.iterdir() if p.name in wanted}
            for stale in _ours(self.out):
                if stale.name not in new and stale.name not in KEEP:
                    shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            order = sorted(new, key=lambda n: (n in (REPORT_MD, REPORT_JSON), n == REPORT_JSON, n.endswith(".onnx"), n))
            for name in order:  # weights, then graphs, then report.md, and report.json last
                target = self.out / name
                if (self.stage / name).is_dir() and target.is_dir():
                    shutil.rmtree(target)
                os.replace(self.stage / name, target)
            if on_done is not None:
                on_done()
            return order


@contextmanager
def folder_lock(out: Path):
    """Exclusive lock on the folder itself (flock on its descriptor: no lock file is left in it) while
    staging folders are made, cleaned up or swapped in."""
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_dead_stagings(out: Path) -> list[str]:
    """Remove `.staging-*` folders of runs that are gone (their lock can be taken). Returns their names."""
    removed = []
    for d in out.glob(PREFIX + "*"):
        lock = d / LOCK
        if not d.is_dir() or d.is_symlink() or not lock.is_file():
            continue
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live run holds it
        finally:
            os.close(fd)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d.name)
    return removed


def _ours(out: Path) -> set[Path]:
    return {p for pattern in OURS for p in out.glob(pattern)}


@contextmanager
def _no_sigint():
    """Hold Ctrl-C until the swap is done, so an interrupt cannot leave it half-way."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    except (ValueError, AttributeError):  # not the main thread / no signal masks: swap unprotected
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
