"""Memory is decided before it is spent: what a build will need, what this process may use, and the refusal.

`build_estimate(facts, params, max_len)` computes, from the model's sizes alone (its family's ModelFacts and its
parameter count, read from a model described on the meta device: nothing allocated), the weights' size and the
build's peak; `available()` is the least of MemAvailable, the cgroup's limit minus its usage and
RLIMIT_AS minus this process's address space, or the override (`--max-memory`, or the environment variable
ROFORMER_TRT_MEMORY_LIMIT, e.g. "8G", so tests are deterministic). `require(estimate, ...)` refuses a build
that would not fit with one line (exit 2) naming both numbers. `release_freed()` gives back, between the steps of a
build, what a finished step freed, so the next step's peak starts from what is still live.

The peak model was fitted to scripts/bench_pipeline.py's measurements (2026-12-02): the default build peaks
at about IMPORTS + 3 x the fp32 weights + ONNX Runtime's activations at batch 1 x max_len (the tiny, demo
and large builds measured 0.57, 2.32 and 3.64 GB; this model says 0.9, 2.9 and 5.2: it errs on the safe
side by design, since its job is to refuse 283 GB, not to save the last 10 %).
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import resource
from dataclasses import dataclass
from pathlib import Path

from export.errors import UsageError
from export.inputs.numbers import parse_size

GB = 10**9
IMPORTS = 0.8 * GB  # torch + transformers + onnx + ONNX Runtime, measured before the checkpoint loads
ENV = "ROFORMER_TRT_MEMORY_LIMIT"


@dataclass(frozen=True)
class Estimate:
    weights: int  # bytes of the fp32 weights
    activations: int  # bytes of ONNX Runtime's activations at batch 1 x max_len
    peak: int  # bytes the whole build is expected to hold at once

    def describe(self) -> str:
        return (
            f"about {self.peak / GB:.1f} GB (fp32 weights {self.weights / GB:.2f} GB, activations at the "
            f"longest sequence {self.activations / GB:.2f} GB)"
        )


def build_estimate(facts, params: int, max_len: int) -> Estimate:
    """facts: export.families.facts.ModelFacts (heads, hidden, intermediate, head_dim); params: the parameters of
    the model the checkpoint fills (export.checkpoint.rebuild.InspectedCheckpoint.params)."""
    weights = 4 * params
    s, heads = max_len, facts.heads
    # attention scores, softmax and the masked copy per head, plus the per-token tensors of a layer
    activations = 4 * (3 * heads * s * s + s * (8 * facts.hidden + 2 * facts.intermediate))
    table = 4 * max_len * facts.head_dim
    return Estimate(weights, activations + table, int(IMPORTS + 3 * weights + activations + table))


def available(override: int | None = None) -> tuple[int, str]:
    """(bytes this process may still use, where that number came from). override: --max-memory, in bytes
    (export.inputs.numbers.size_arg read it); the environment variable is read here by the same parser."""
    if override is not None:
        return override, "--max-memory"
    if os.environ.get(ENV):
        return env_limit(), ENV
    limits = [v for v in (_mem_available(), _cgroup_room(), _address_space_room()) if v is not None]
    return min(limits, key=lambda v: v[0]) if limits else (1 << 62, "no limit found")


def env_limit() -> int:
    """ROFORMER_TRT_MEMORY_LIMIT in bytes (e.g. 8G); NumberError (exit 2) for anything but a size."""
    return parse_size(os.environ[ENV], what=ENV)


def require(estimate: Estimate, what: str, override: int | None = None) -> None:
    """UsageError when the estimate does not fit. An override is the whole process's budget; a measured limit
    is the room left now, after the imports this process already holds."""
    have, source = available(override)
    measured = override is None and not os.environ.get(ENV)
    need = estimate.peak - IMPORTS if measured else estimate.peak
    if need > have:
        raise UsageError(
            f"{what} needs {estimate.describe()}, but only {have / GB:.1f} GB is available ({source}); "
            "use a smaller --max-len or a machine with more memory (--max-memory overrides the limit)"
        )


def _mem_available() -> tuple[int, str] | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable"
    except OSError:
        pass
    return None


def _cgroup_room() -> tuple[int, str] | None:
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            text = Path(limit).read_text().strip()
            if text == "max" or int(text) >= 1 << 60:
                return None
            return int(text) - int(Path(usage).read_text().strip()), "the cgroup's memory limit"
        except (OSError, ValueError):
            continue
    return None


def _address_space_room() -> tuple[int, str] | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        size = next(
            int(line.split()[1]) * 1024
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("VmSize:")
        )
    except (OSError, StopIteration):
        size = 0
    return soft - size, "RLIMIT_AS (ulimit -v)"


def release_freed() -> None:
    """Return to the system what is already free: objects kept only by reference cycles (ONNX Runtime's graph
    optimizer holds its whole model in some, until collected) and the heap pages glibc keeps after a
    free (malloc_trim; elsewhere the C library keeps them). Changes no value; costs a garbage collection."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim, the collection above still ran
        return None
