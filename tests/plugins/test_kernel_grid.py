"""The CUDA kernel's per-thread body (rotaryThread, roformerRotaryThread.h) run over whole grids on the CPU.

plugins/tests/kernelGridTest.cpp calls the kernel's own function for every (block, thread): each vector
width and the element fallback, misaligned pointers, R < Dh, grids smaller than the work, odd sizes,
k = 1..4, fp32/fp16/bf16; bit-exact against the C++ host reference, guard bytes around every output,
inputs untouched, every vector access aligned to its width. Needs cmake and the CUDA headers, no GPU and
no TensorRT: it runs in CI. A second build with AddressSanitizer + UBSan runs the same program.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.plugins.fixtures import SANITIZE_BUILD_DIR, build_targets, plugin_build, sanitizer_supported  # noqa: F401

TARGET = "roformer_rotary_kernel_grid_test"
PATHS = {
    "fp32": {"16B vector", "8B vector", "element"},
    "fp16": {"16B vector", "8B vector", "4B vector", "element"},
    "bf16": {"16B vector", "8B vector", "4B vector", "element"},
}


def check_run(exe):
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "kernel grid: passed (0 failures)" in out, out[-4000:]
    seen: dict[str, set[str]] = {}
    for dtype, path in re.findall(r"^path (\w+) (.+): \d+ cases$", r.stdout, re.M):
        seen.setdefault(dtype, set()).add(path)
    assert seen == PATHS, seen  # every vector width and the element fallback, per dtype
    oks = re.findall(r"^ok .* k=(\d) .* offset=(\d+/\d+) grid=(\S+) path=", r.stdout, re.M)
    assert {k for k, _, _ in oks} == {"1", "2", "3", "4"} and {g for _, _, g in oks} == {"launcher", "1x32", "3x7"}
    assert any("R=32" in line and "Dh=64" in line for line in r.stdout.splitlines())  # R < Dh pass-through
    assert {"0/1", "4/2"} <= {o for _, o, _ in oks}  # x and y aligned differently
    return len(oks)


def test_kernel_grid_on_cpu(plugin_build):  # noqa: F811
    if plugin_build.skip_reason:
        pytest.skip(plugin_build.skip_reason)
    exe = plugin_build.build_dir / "tests" / TARGET
    assert exe.is_file(), f"{exe} was not built (ROFORMER_TRT_TESTS is ON by default)"
    assert check_run(exe) == 1296


def test_kernel_grid_under_asan_ubsan():
    why = sanitizer_supported()
    if why:
        pytest.skip(why)
    ok, log = build_targets(SANITIZE_BUILD_DIR, [TARGET], {"ROFORMER_TRT_SANITIZE": "ON"})
    assert ok, log[-4000:]
    assert check_run(SANITIZE_BUILD_DIR / "tests" / TARGET) == 1296


def test_launcher_takes_the_launch_error():
    """cudaPeekAtLastError would leave a failed launch's error set for every later enqueue on the thread (our
    cudart is static and private, nobody else clears it): the launcher must take it with cudaGetLastError.
    (On a GPU, tests/plugins/test_kernel_gpu.py runs the launcher itself.)"""
    from plugins import identity

    src = (identity.CONFIG_YAML.parent / "roformerRotaryKernel.cu").read_text()
    code = "\n".join(line.split("//")[0] for line in src.splitlines())
    assert "cudaPeekAtLastError" not in code and "return cudaGetLastError();" in code
