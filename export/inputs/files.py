"""Reading the files a user names, safely, and checking the ones a command will write: every refusal is one
UsageError line (exit 2).

In:  a path, `what` the file is meant to be (used in the message, e.g. "checkpoint config"), a size cap.
Out: its bytes, UTF-8 text, parsed JSON or parsed TOML.

- a missing file, a directory, a FIFO, a character or block device or a socket is refused from its
  `stat`, before it is opened; the open uses O_NONBLOCK (a FIFO swapped in after the stat cannot hang
  the open) and `fstat` re-checks that what was opened is a regular file;
- at most `max_bytes + 1` bytes are read, so a file over the cap is refused without being read whole
  (and a regular file whose size the kernel does not report, like /proc/*, cannot grow memory either);
- text must be UTF-8; JSON deeper than `max_depth` containers (RecursionError inside json.loads
  included), integers longer than export.inputs.numbers.MAX_CHARS digits (JSON and TOML: Python's int() refuses
  4300 digits with a ValueError and is quadratic before that) and invalid JSON or TOML are refused naming the
  file, what it is and the fix. `parse_json` applies the same rules to JSON text read some other way (a line).

Files a command writes are checked before its work by `check_output_file` (not a folder, not one of its
inputs, its folder writable) and `check_distinct` (two flags never name one file).

Imports only export.errors and export.inputs.numbers, so any module of export, engines or plugins may use it.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from export.errors import UsageError
from export.inputs.numbers import MAX_CHARS, NumberError, json_int

MiB = 1 << 20
_CHUNK = 1 << 20


def require_regular_file(path: str | Path, *, what: str) -> Path:
    """`path` if it names an existing regular file (symlinks followed); else UsageError. Opens nothing."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist; check the path") from None
    except NotADirectoryError:
        raise UsageError(f"{what} {path} does not exist (a parent is not a folder); check the path") from None
    except OSError as e:
        raise UsageError(f"{what} {path} cannot be read ({e.strerror}); check the path and its permissions") from None
    _require_regular(st.st_mode, path, what)
    return path


def _require_regular(mode: int, path: Path, what: str) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise UsageError(f"{what} {path} is a directory, not a file; pass the file itself")
    kind = (
        "FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "character device"
        if stat.S_ISCHR(mode)
        else "block device"
        if stat.S_ISBLK(mode)
        else "socket"
        if stat.S_ISSOCK(mode)
        else "special file"
    )
    raise UsageError(f"{what} {path} is a {kind}, not a regular file; pass a regular file")


def read_bytes(path: str | Path, *, what: str, max_bytes: int) -> bytes:
    """The whole file, refused (UsageError) unless it is a regular file of at most `max_bytes` bytes."""
    path = require_regular_file(path, what=what)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise UsageError(f"{what} {path} cannot be opened ({e.strerror}); check the path and its permissions") from None
    try:
        st = os.fstat(fd)
        _require_regular(st.st_mode, path, what)  # the file opened may not be the one stat saw
        if st.st_size > max_bytes:
            raise UsageError(_too_big(path, what, st.st_size, max_bytes))
        parts, got = [], 0
        while got <= max_bytes:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - got))
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        if got > max_bytes:  # grew after fstat, or a size the kernel does not report
            raise UsageError(_too_big(path, what, None, max_bytes))
        return b"".join(parts)
    except OSError as e:
        raise UsageError(f"{what} {path} cannot be read ({e.strerror}); check the file") from None
    finally:
        os.close(fd)


def _too_big(path: Path, what: str, size: int | None, cap: int) -> str:
    got = f"{size} bytes" if size is not None else "larger than that"
    return (
        f"{what} {path} is {got}, over the {cap}-byte limit for a {what}; "
        "pass the right file (this one is not what it is named)"
    )


def read_text(path: str | Path, *, what: str, max_bytes: int) -> str:
    """read_bytes decoded as UTF-8 (a BOM is dropped); anything else is a UsageError."""
    data = read_bytes(path, what=what, max_bytes=max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UsageError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); re-save it as UTF-8"
        ) from None


def json_depth(obj: object) -> int:
    """Nesting depth of containers (a scalar is 0, `[]` and `{}` are 1); iterative, so any depth is safe."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            o = list(o.values())
        elif not isinstance(o, list):
            continue
        deepest = max(deepest, d)
        stack.extend((v, d + 1) for v in o if isinstance(v, (dict, list)))
    return deepest


def load_json(path: str | Path, *, what: str, max_bytes: int = 16 * MiB, max_depth: int = 64) -> object:
    """Parsed JSON of a UTF-8 file of at most `max_bytes`, nested at most `max_depth` containers deep."""
    return parse_json(read_text(path, what=what, max_bytes=max_bytes), where=f"{what} {path}", max_depth=max_depth)


def parse_json(text: str, *, where: str, max_depth: int = 64, fix: str = "fix or regenerate it") -> object:
    """Parsed JSON text, nested at most `max_depth` containers deep, integers of at most MAX_CHARS digits;
    UsageError starting with `where` (e.g. "c.jsonl:3") and ending with `fix` otherwise."""
    too_deep = f"{where} nests JSON deeper than {max_depth} levels; {fix}"
    try:
        obj = json.loads(text, parse_int=json_int)
    except RecursionError:  # the C decoder stops at the interpreter's recursion limit instead of crashing
        raise UsageError(too_deep) from None
    except NumberError:
        raise UsageError(f"{where} holds an integer longer than {MAX_CHARS} digits; {fix}") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{where} is not valid JSON (line {e.lineno} column {e.colno}: {e.msg}); {fix}") from None
    if json_depth(obj) > max_depth:
        raise UsageError(too_deep)
    return obj


def load_toml(path: str | Path, *, what: str, max_bytes: int = MiB) -> dict:
    """Parsed TOML (a dict) of a UTF-8 file of at most `max_bytes`."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser, published as tomli
        import tomli as tomllib
    text = read_text(path, what=what, max_bytes=max_bytes)
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise UsageError(f"{what} {path} nests TOML too deeply to parse; pass the right file") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{what} {path} is not valid TOML ({str(e).splitlines()[0]}); fix or regenerate it") from None
    except ValueError:  # tomllib's own int() past Python's 4300-digit limit
        raise UsageError(f"{what} {path} holds a number too long to read; fix or regenerate it") from None


def check_output_file(path: str | Path, *, flag: str, inputs: Iterable[str | Path] = ()) -> Path:
    """A file a command will write (atomically: a temp file beside it, then a rename), checked before any work:
    refused (UsageError naming `flag`) when it is a folder or another non-regular file, when it is one of
    `inputs` (the same file, through links too: a run never writes over what it reads), or when its folder
    cannot take a new file, which is probed by creating and removing a temp file there (root can write to
    read-only modes, not to /proc: the probe answers what permission bits cannot)."""
    path = Path(path)
    if path.is_symlink() or path.exists():
        if path.is_dir():
            raise UsageError(f"{flag} {path} is a folder; pass a file path")
        if path.exists() and not path.is_file():
            raise UsageError(f"{flag} {path} is not a regular file; pass a file path")
        for other in inputs:
            if Path(other).exists() and path.exists() and os.path.samefile(path, other):
                raise UsageError(f"{flag} {path} is {other}, an input of this run; write it somewhere else")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the write makes missing folders: probe the first one
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {path} cannot be written: {folder} is not a folder; pass another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as e:
        raise UsageError(f"{flag} {path} cannot be written in {folder} ({e.strerror}); pass another path") from None
    os.close(fd)
    os.unlink(probe)
    return path


def check_distinct(paths: dict[str, str | Path | None]) -> None:
    """UsageError when two output flags name one file ({flag: path or None})."""
    seen: dict[Path, str] = {}
    for flag, p in paths.items():
        if p is None:
            continue
        key = Path(os.path.abspath(p))
        if key in seen:
            raise UsageError(f"{seen[key]} and {flag} name the same file {p}; give each its own")
        seen[key] = flag
