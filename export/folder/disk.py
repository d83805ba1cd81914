"""Disk is decided before it is spent, and a full disk is named as such.

`need(params, planned)`: the bytes a build writes, from the parameter count and the planned files alone (every graph's
weights: fp32 in model.onnx.data once, the low-precision copies of a precision graph, a plan); `require`
refuses a build whose need exceeds the free space of --out's file system (exit 2, one line with both
numbers). `full_disk(out, need, error)` turns a failure that happened because the disk filled up anyway (a
file grew elsewhere meanwhile; `Errno 28`, or a library's own words for it) into that same one line.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from export.errors import UsageError
from export.folder.layout import Planned
from export.memory import GB

SLACK = 16 << 20  # graphs, reports, the timing cache: small next to the weights
NEARLY_FULL = 8 << 20  # a write that failed with less than this free failed for want of space


def need(params: int, planned: Planned) -> int:
    weights = 4 * params
    # bf16 also writes its fp32 twin; int8 a byte per MatMul weight twice (the Q/DQ graph and the CPU twin)
    low = {"fp32": 0.0, "fp16": 0.5, "bf16": 1.5, "int8": 0.5, "fp8": 0.25}.get(planned.precision, 1.0)
    plan = (0.5 if planned.precision != "fp32" else 1.0) if planned.engine else 0.0
    return int(weights * (1.0 + low + plan)) + SLACK


def free(out: Path) -> int:
    probe = Path(out)
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def require(out: Path, nbytes: int) -> None:
    have = free(out)
    if nbytes > have:
        raise UsageError(
            f"--out {out} has {have / GB:.2f} GB free but this build writes about {nbytes / GB:.2f} GB; "
            "free some space or pass an --out on another disk"
        )


def full_disk(out: Path, nbytes: int, error: BaseException) -> UsageError | None:
    """The one-line UsageError when `error` happened because --out's disk is full, else None."""
    no_space = isinstance(error, OSError) and error.errno == errno.ENOSPC
    if not no_space and free(out) >= NEARLY_FULL:
        return None
    return UsageError(
        f"no space left on the disk of --out {out} (Errno {errno.ENOSPC}); the build writes about "
        f"{nbytes / GB:.2f} GB: free some space or pass an --out on another disk"
    )
