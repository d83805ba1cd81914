"""A build folder whose report always describes exactly the files beside it, and whose user files are safe.

A run works in `<out>/.staging-<random>/`, holding an exclusive lock on `.staging-*/.lock` for its whole
life, and moves the finished set into `<out>` at the end: the previous set stays untouched until then.
Staging folders of dead runs (killed, even by SIGKILL) are removed by the next run: the kernel drops a
dead process's lock, so a staging folder of ours whose lock can be taken belongs to nobody.

Ownership (export.folder.ownership): a run removes or replaces only files a run of ours wrote, as the manifest
`.roformer-trt-files.json` and the previous report record them, with their sha256. Everything else in
`<out>` is the user's: never moved, replaced or removed (a folder such as `bench/` is never removed
whole: only our files in it, and the folder itself once it is empty). A staging folder is ours only when its
`.lock` holds our marker with the folder's own name (`marker`): a `.staging-mybackup/` of the user's is never
touched.

Every path a run will write (the planned files, the manifest, the folders they go in) and every file of ours it
will replace or remove is checked before any work (`check_targets`, exit 2, naming it): a folder, a symlink or a
file where one of our folders goes, a file that cannot be written (read-only, immutable) or a folder that
cannot be written is refused even with `force`; a user's file under a planned name (an edited report, a
manifest that is not ours included) is refused unless `force`.

The swap (`commit`), under a lock on the folder and with Ctrl-C held:
1. the manifest is rewritten to claim the old and the new set (a kill from here on leaves a folder whose
   every file of ours is still recognised);
2. the old report.json and report.md are removed (no report may describe a half-swapped folder);
3. files of the old set the new one does not have are removed;
4. the new files are moved in: weights (`*.data`), then other files, graphs (`*.onnx`), report.md, and
   report.json last;
5. the manifest is rewritten to the new set with its hashes.
`commit` returns the moves in the order made, so the order is checked by a test, not trusted.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

from export.errors import UsageError
from export.folder.digest import sha256_file
from export.folder.layout import MANIFEST, TASKS_INDEX
from export.folder.ownership import TOOL, Ownership, merge_claims, write_manifest
from export.report.schema import REPORT_JSON, REPORT_MD, TIMING_CACHE

PREFIX = ".staging-"
LOCK = ".lock"
KEEP = (TIMING_CACHE,)  # reused by later runs; kept when the new set does not write it


class BuildFolder:
    """`with BuildFolder(out) as bf:` work in `bf.stage`, then `bf.commit(files)`; without commit, out is untouched."""

    def __init__(self, out: Path, force: bool = False):
        self.out = Path(out)
        self.force = force
        self.created = False
        self.stage: Path | None = None
        self._lock_fd: int | None = None

    def __enter__(self) -> BuildFolder:
        check_out_path(self.out)
        self.created = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            with folder_lock(self.out):  # no other run cleans up or swaps while this staging folder is born
                remove_dead_stagings(self.out)
                self.stage = Path(tempfile.mkdtemp(prefix=PREFIX, dir=self.out))
                self._lock_fd = os.open(self.stage / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
                os.write(self._lock_fd, marker(self.stage.name))
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except BaseException as e:
            self.__exit__()  # nothing half-made stays behind, Ctrl-C included
            if isinstance(e, OSError):
                raise UsageError(
                    f"--out {self.out} is not writable ({e.strerror}); pass a folder you can write to"
                ) from None
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        if self.created and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()  # a run that produced nothing leaves no empty folder it made

    def check_targets(self, planned: Iterable[str]) -> None:
        """UsageError (before any work) naming the first path this run cannot or may not write: see the module."""
        names = list(dict.fromkeys([MANIFEST, *planned]))  # first: a manifest not ours is why nothing else is ours
        owner = Ownership(self.out)
        problem = _blocked(self.out, names + owner.files())
        if problem:
            raise UsageError(f"--out {self.out} holds {problem}; move it away or pass another --out")
        taken = owner.collisions(names)
        if taken and not self.force:
            more = f" (and {len(taken) - 1} more)" if len(taken) > 1 else ""
            raise UsageError(
                f"--out {self.out} holds {taken[0]!r}{more}, not written by roformer-trt (no record of ours has its "
                "sha256), which this build would replace; move it away, pass another --out, or pass --force to "
                "overwrite it"
            )

    def staged(self) -> Path:
        """The staging folder; RuntimeError outside the with-block."""
        if self.stage is None:
            raise RuntimeError(f"{type(self).__name__} is used outside its with-block")
        return self.stage

    def reuse(self, *names: str) -> None:
        """Link (or copy) files of the previous set that a stage may reuse into the staging folder: only files a
        run of ours wrote, never a user's file of the same name."""
        owner, stage = Ownership(self.out), self.staged()
        for name in names:
            src, dst = self.out / name, stage / name
            if owner.owns(name) and not dst.exists():
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)

    def commit(
        self, files: Iterable[str], hashes: dict[str, str], on_done: Callable[[], None] | None = None
    ) -> list[str]:
        """Move the finished set into place: `files` (paths relative to the staging folder, e.g. "model.onnx",
        "bench/bench.json"), plus report.json, report.md and KEEP when the staging folder has them; anything else
        there is dropped with it. `hashes`: sha256 of files already hashed (the report's). Returns the moves in
        the order made. Ctrl-C waits until it is done, and `on_done` runs before it is let through."""
        stage = self.staged()
        with _no_sigint(), folder_lock(self.out):
            wanted = set(files) | {REPORT_JSON, REPORT_MD, *KEEP}
            new = sorted(n for n in wanted if (stage / n).is_file())
            owner = Ownership(self.out)
            old = owner.files()
            self.check_targets(new)  # again under the lock: a user's file may have appeared meanwhile
            new_hashes = {n: hashes.get(n) or sha256_file(stage / n) for n in new}
            write_manifest(self.out, merge_claims({n: owner.claims[n] for n in old}, new_hashes))  # both sets
            for name in sorted(n for n in old if _is_report(n)):  # a task sub-folder's too (export.build --task all)
                (self.out / name).unlink()  # first: no report may describe a half-swapped folder
            for stale in sorted(n for n in set(old) - set(new) - set(KEEP) if not _is_report(n)):
                _remove_file(self.out, stale)
            kept = {n: owner.claims[n] for n in KEEP if n in old and n not in new}
            moves = sorted(new, key=move_rank)
            for name in moves:  # weights, then other files, graphs, report.md, and report.json last
                _place(stage / name, self.out / name)
            write_manifest(self.out, {**kept, **new_hashes})
            if on_done is not None:
                on_done()
            return moves


def move_rank(name: str) -> tuple:
    """Weights first, then anything else, then graphs (which read the weights), the report.md and report.json of
    every folder (a task sub-folder's too), the --task all index, report.json last."""
    base = name.rsplit("/", 1)[-1]
    return (
        name == REPORT_JSON,
        name == TASKS_INDEX,
        base in (REPORT_JSON, REPORT_MD),
        name.endswith(".onnx"),
        not name.endswith(".data"),
        name,
    )


def _is_report(name: str) -> bool:
    return name.rsplit("/", 1)[-1] in (REPORT_JSON, REPORT_MD)


def check_out_path(out: Path) -> None:
    """--out problems a user can fix, found from the path alone before any work (UsageError, exit 2)."""
    for part in out.parts:
        if len(os.fsencode(part)) > 255:
            raise UsageError(
                f"--out has a path component of {len(os.fsencode(part))} bytes ({part[:40]}...); file "
                "systems allow 255, pass a shorter name"
            )
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; pass a folder path")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"--out {out} cannot be made: {probe} is a file; pass a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(
            f"--out {out} is not writable ({probe} is read-only for this user); pass a folder you can write to"
        )


def _place(src: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, target)


def _remove_file(out: Path, rel: str) -> None:
    """Remove one file of ours, then the folders it leaves empty up to `out` (never a folder with anything in it)."""
    path = out / rel
    path.unlink(missing_ok=True)
    parent = path.parent
    while parent != out and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


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


def marker(name: str) -> bytes:
    """What a run writes into its staging folder's `.lock`: our own words and the folder's own name."""
    return f"{TOOL} staging folder {name}: removed by the next run once its lock is free\n".encode()


def remove_dead_stagings(out: Path) -> list[str]:
    """Remove staging folders of runs that are gone: only folders whose `.lock` holds our marker for that very
    folder (a user's `.staging-*` folder, or a copy of ours under another name, is kept) and whose lock can be
    taken (a live run holds it). Returns their names."""
    removed = []
    for d in out.glob(PREFIX + "*"):
        lock = d / LOCK
        if d.is_symlink() or not d.is_dir() or lock.is_symlink() or not lock.is_file():
            continue
        want = marker(d.name)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if os.read(fd, len(want) + 1) != want:
                continue  # not a staging folder of ours
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live run holds it
        finally:
            os.close(fd)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d.name)
    return removed


def _blocked(out: Path, names: Iterable[str]) -> str | None:
    """What stands where this run writes, whatever --force says: a folder where a file goes, a file or symlink where
    a folder goes, a file or folder that cannot be written (read-only, or immutable: chattr +i). None if nothing."""
    for name in dict.fromkeys(names):
        path = out / name
        for parent in reversed(path.relative_to(out).parents[:-1]):  # bench/ of bench/bench.json, outermost first
            where = out / parent
            if where.is_symlink() or (where.exists() and not where.is_dir()):
                return f"{parent.as_posix()!r}, not a folder, where this build writes {name!r}"
            if where.is_dir() and not os.access(where, os.W_OK | os.X_OK):
                return f"a folder {parent.as_posix()!r} this build cannot write to (it writes {name!r} there)"
        if path.is_dir() and not path.is_symlink():
            return f"a folder {name!r} where this build writes a file"
        if path.is_file() and not path.is_symlink() and not os.access(path, os.W_OK):
            return f"{name!r}, which this build replaces or removes but cannot write (read-only or immutable)"
    return None


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
