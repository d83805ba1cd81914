"""The CUDA kernel's per-thread body (rotaryThread, roformerRotaryThread.h) run over whole grids on the CPU.

plugins/tests/kernelGridTest.cpp calls the kernel's own function for every (block, thread): both layouts
(interleaved 1 and 0), each vector width and the element fallback, misaligned pointers, R < Dh, R/2 not a
multiple of the vector (split halves), tensors with fewer heads than x_0 (grouped-query attention) and
more, grids smaller than the work, odd sizes, k = 1..4, fp32/fp16/bf16; bit-exact against the C++ host
reference, guard bytes around every output, inputs untouched, every vector access aligned to its width.
Needs cmake and the CUDA headers, no GPU and no TensorRT: it runs in CI. A second build with
AddressSanitizer + UBSan runs the same program.
"""

from __future__ import annotations

import ctypes
import re
import subprocess

import numpy as np
import pytest

from plugins import identity, locate
from tests.plugins import builds
from tests.plugins.fixtures import bind_launch, built, plugin_build, sanitizer_supported  # noqa: F401

TARGET = builds.GRID_TARGET
WIDTHS = {
    "fp32": {"16B vector", "8B vector", "element"},
    "fp16": {"16B vector", "8B vector", "4B vector", "element"},
    "bf16": {"16B vector", "8B vector", "4B vector", "element"},
}
PATHS = {(layout, dtype): paths for layout in ("interleaved", "split") for dtype, paths in WIDTHS.items()}
CASES = 2 * 3 * 4 * 10 * 6 * 3  # layouts x dtypes x k x shapes x pointer offsets x grids


def check_run(exe):
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "kernel grid: passed (0 failures)" in out, out[-4000:]
    seen: dict[tuple[str, str], set[str]] = {}
    for layout, dtype, path in re.findall(r"^path (\w+) (\w+) (.+): \d+ cases$", r.stdout, re.M):
        seen.setdefault((layout, dtype), set()).add(path)
    assert seen == PATHS, seen  # every vector width and the element fallback, per layout and dtype
    oks = re.findall(r"^ok   (\w+) \w+ k=(\d) .* H=(\S+) .* offset=(\d+/\d+) grid=(\S+) path=", r.stdout, re.M)
    assert {k for _, k, _, _, _ in oks} == {"1", "2", "3", "4"}
    assert {g for *_, g in oks} == {"launcher", "1x32", "3x7"}
    for layout in ("interleaved", "split"):
        lines = [line for line in r.stdout.splitlines() if line.startswith(f"ok   {layout} ")]
        assert any("R=32" in line and "Dh=64" in line for line in lines)  # R < Dh pass-through
        assert any(" H=4,2,2 " in line for line in lines) and any(" H=1,3 " in line for line in lines)  # own H_i
    assert {"0/1", "4/2"} <= {o for *_, o, _ in oks}  # x and y aligned differently
    return len(oks)


def test_kernel_grid_on_cpu(plugin_build):  # noqa: F811
    if plugin_build.skip_reason:
        pytest.skip(plugin_build.skip_reason)
    exe = plugin_build.build_dir / "tests" / TARGET
    assert exe.is_file(), f"{exe} was not built (ROFORMER_TRT_TESTS is ON by default)"
    assert check_run(exe) == CASES


def test_kernel_grid_under_asan_ubsan():
    why = sanitizer_supported()
    if why:
        pytest.skip(why)
    assert check_run(built(builds.grid_sanitize_build()) / "tests" / TARGET) == CASES


def test_launcher_takes_the_launch_error():
    """cudaPeekAtLastError would leave a failed launch's error set for every later enqueue on the thread (our
    cudart is static and private, nobody else clears it): the launcher must take it with cudaGetLastError.
    (On a GPU, tests/plugins/test_kernel_gpu.py runs the launcher itself.)"""
    from plugins import identity

    src = (identity.CONFIG_YAML.parent / "roformerRotaryKernel.cu").read_text()
    code = "\n".join(line.split("//")[0] for line in src.splitlines())
    assert "cudaPeekAtLastError" not in code and "return cudaGetLastError();" in code


def test_launcher_c_entry_validates_before_any_cuda_call(plugin_build):  # noqa: F811
    """The C entry's argument order and its refusals, on the CPU: a call it refuses (cudaErrorInvalidValue = 1)
    and an empty call (B = 0: cudaSuccess) both return before any CUDA call, so they need no GPU. An argument
    out of place (H as a count, interleaved and k swapped, ...) turns these answers around."""
    lib = bind_launch(ctypes.CDLL(str(plugin_build.require(locate.KERNEL_LIB, "see the CMake log"))))
    buf = np.zeros(4096, np.float32)
    ptrs = (ctypes.c_void_p * 4)(*([buf.ctypes.data] * 4))
    heads = (ctypes.c_int64 * 4)(4, 2, 2, 2)  # grouped-query attention: x_1.. with 2 heads

    def launch(dtype=0, interleaved=1, k=2, b=0, h=heads, s=5, dh=8, r=8, p=5):
        return lib.roformer_rotary_launch(dtype, interleaved, k, ptrs, ptrs, buf.ctypes.data, b, h, s, dh, r, p, None)

    for layout in identity.INTERLEAVED_ALLOWED:
        for k in range(1, 5):
            assert launch(interleaved=layout, k=k) == 0  # B = 0: nothing to do, a valid call
    for bad in (
        dict(interleaved=2),
        dict(interleaved=-1),
        dict(k=0),
        dict(k=5),
        dict(dtype=3),
        dict(s=6),  # S > P
        dict(r=6, dh=4),  # R > Dh
        dict(r=3),
        dict(b=-1),
        dict(h=(ctypes.c_int64 * 4)(4, -2, 2, 2)),  # a negative H_1
        dict(h=None),
    ):
        assert launch(**bad) == 1, bad  # cudaErrorInvalidValue
