"""engines/cpp compiles -Wall -Wextra -Werror clean against the TensorRT headers of every major found
(tests.fixtures.toolchain: $ROFORMER_TRT_TENSORRT_INCLUDE, $TensorRT_INCLUDE_DIR or ../shared/tensorrt-headers).
Compile only (objects): linking and running need libnvinfer and a GPU, which CI does not have."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.fixtures.toolchain import headers_missing, skip_or_fail, tensorrt_include_dirs, version_of

CPP = Path(__file__).resolve().parents[3] / "engines" / "cpp"
CUDA_INC = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"
HEADERS = tensorrt_include_dirs()


def toolchain(need_cmake: bool = False) -> None:
    if shutil.which("c++") is None:
        skip_or_fail("no C++ compiler (c++) on PATH")
    if not (CUDA_INC / "cuda_runtime_api.h").is_file():
        skip_or_fail(f"CUDA headers not found in {CUDA_INC}; set CUDA_HOME")
    if need_cmake and shutil.which("cmake") is None:
        skip_or_fail("cmake not on PATH")


@pytest.mark.skipif(not HEADERS, reason=headers_missing())
@pytest.mark.parametrize("include", HEADERS, ids=[version_of(h) for h in HEADERS])
def test_embed_compiles_with_warnings_as_errors(tmp_path, include):
    toolchain()
    cmd = ["c++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-isystem", str(include), "-isystem", str(CUDA_INC),
           "-c", str(CPP / "embed.cpp"), "-o", str(tmp_path / "embed.o")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert (tmp_path / "embed.o").stat().st_size > 0


@pytest.mark.skipif(not HEADERS, reason=headers_missing())
@pytest.mark.parametrize("include", HEADERS, ids=[version_of(h) for h in HEADERS])
def test_cmake_project_builds_objects(tmp_path, include):
    toolchain(need_cmake=True)
    b = tmp_path / "b"
    cfg = subprocess.run(["cmake", "-S", str(CPP), "-B", str(b), f"-DTensorRT_INCLUDE_DIR={include}",
                          "-DEMBED_COMPILE_ONLY=ON"], capture_output=True, text=True, timeout=120)
    assert cfg.returncode == 0, cfg.stderr
    build = subprocess.run(["cmake", "--build", str(b)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    assert list(b.rglob("embed.cpp.o"))

