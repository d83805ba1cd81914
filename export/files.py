"""Reading user-named input files safely (placeholder until the reliability branch lands; same API)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from export.errors import UsageError

MAX_TOML_BYTES = 1 << 20  # a thresholds file is a few hundred bytes


def read_bytes(path: str | Path, *, what: str, max_bytes: int) -> bytes:
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UsageError(f"{what} {p} does not exist; pass an existing file") from None
    except OSError as e:
        raise UsageError(f"{what} {p} cannot be opened ({e.strerror}); pass a readable file") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{what} {p} is not a regular file; pass a file")
        if st.st_size > max_bytes:
            raise UsageError(f"{what} {p} is {st.st_size} bytes, over the {max_bytes}-byte limit; pass the right file")
        return f.read(max_bytes + 1)


def load_json(path: str | Path, *, what: str, max_bytes: int = 16 << 20, max_depth: int = 64) -> object:
    raw = read_bytes(path, what=what, max_bytes=max_bytes)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UsageError(f"{what} {path} is not readable JSON ({str(e).splitlines()[0][:120]})") from None


def read_text(path: str | Path, *, what: str, max_bytes: int) -> str:
    raw = read_bytes(path, what=what, max_bytes=max_bytes)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is not UTF-8 text; pass a text file") from None
