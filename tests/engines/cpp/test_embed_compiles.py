"""engines/cpp compiles -Wall -Wextra -Werror clean against the TensorRT headers of every major found
(tests.fixtures.toolchain: $ROFORMER_TRT_TENSORRT_INCLUDE, $TensorRT_INCLUDE_DIR or ../shared/tensorrt-headers).
Compile only (objects): linking and running need libnvinfer and a GPU, which CI does not have. What a compiler
lets through is read from the source: includes a standard library happens to bring in transitively, and the
element types of the precisions the export writes."""

from __future__ import annotations

import ctypes.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from export.report.thresholds import PRECISIONS
from tests.fixtures.toolchain import headers_missing, skip_or_fail, tensorrt_include_dirs, version_of

CPP = Path(__file__).resolve().parents[3] / "engines" / "cpp"
CUDA_INC = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"
HEADERS = tensorrt_include_dirs()
# std:: names embed.cpp uses -> the header the standard declares them in (libstdc++ may bring it in anyway).
STD_HEADERS = {
    "max": "algorithm",
    "min": "algorithm",
    "sort": "algorithm",
    "find": "algorithm",
    "istreambuf_iterator": "iterator",
    "unique_ptr": "memory",
    "runtime_error": "stdexcept",
    "ifstream": "fstream",
    "istringstream": "sstream",
    "strcmp": "cstring",
    "remove_pointer_t": "type_traits",
}
# The precisions export.build writes (export.passes.precision) -> TensorRT DataType and its bytes.
OUTPUT_TYPES = {
    "fp32": ("kFLOAT", 4),
    "fp16": ("kHALF", 2),
    "bf16": ("kBF16", 2),
    # Q/DQ graphs (export.passes.quantize) quantize only inside: their outputs stay float
    "int8": ("kFLOAT", 4),
    "fp8": ("kFLOAT", 4),
}


def code() -> str:
    """embed.cpp without // comments."""
    return "\n".join(line.split("//")[0] for line in (CPP / "embed.cpp").read_text().splitlines())


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
    cmd = [
        "c++",
        "-std=c++17",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-isystem",
        str(include),
        "-isystem",
        str(CUDA_INC),
        "-c",
        str(CPP / "embed.cpp"),
        "-o",
        str(tmp_path / "embed.o"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert (tmp_path / "embed.o").stat().st_size > 0


@pytest.mark.skipif(not HEADERS, reason=headers_missing())
@pytest.mark.parametrize("include", HEADERS, ids=[version_of(h) for h in HEADERS])
def test_cmake_project_builds_objects(tmp_path, include):
    """The C++ README's command with the headers and no libnvinfer: EMBED_COMPILE_ONLY switches on by itself."""
    toolchain(need_cmake=True)
    b, no_lib = tmp_path / "b", tmp_path / "no-lib"
    no_lib.mkdir()
    cfg = subprocess.run(
        ["cmake", "-S", str(CPP), "-B", str(b), f"-DTensorRT_INCLUDE_DIR={include}", f"-DTensorRT_LIB_DIR={no_lib}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cfg.returncode == 0, cfg.stderr
    build = subprocess.run(["cmake", "--build", str(b)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    assert list(b.rglob("embed.cpp.o"))
    if ctypes.util.find_library("nvinfer") is None:  # a machine with libnvinfer links the example instead
        assert "compiling objects only" in cfg.stdout and not (b / "embed").exists()


def test_cmake_without_tensorrt_headers_says_what_it_needs_in_one_line(tmp_path):
    """The sources include NvInfer.h, so without headers nothing compiles: configure refuses, naming the flag, in
    one line, before looking for anything else (a CPU machine may have no CUDA toolkit either)."""
    if shutil.which("cmake") is None:
        skip_or_fail("cmake not on PATH")
    r = subprocess.run(
        ["cmake", "-S", str(CPP), "-B", str(tmp_path / "b"), f"-DTensorRT_INCLUDE_DIR={tmp_path / 'none'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = [line for line in r.stderr.splitlines() if "NvInfer.h" in line]
    assert r.returncode != 0 and len(said) == 1, r.stderr
    assert "-DTensorRT_INCLUDE_DIR=" in said[0] and "github.com/NVIDIA/TensorRT" in said[0], said[0]
    assert "CUDA" not in r.stderr  # the first missing thing is named, not a CMake error further on


def test_every_std_name_used_has_its_own_include():
    src = code()
    included = set(re.findall(r"#include\s*<(\w+)>", src))
    missing = {
        f"std::{name} needs <{header}>"
        for name, header in STD_HEADERS.items()
        if re.search(rf"\bstd::{name}\b", src) and header not in included
    }
    assert not missing, sorted(missing)


def test_element_size_and_to_float_cover_every_exported_precision():
    src = code()
    size_body = src.split("size_t elementSize(DataType t)", 1)[1].split("\n}\n", 1)[0]
    sizes = {t: int(n) for t, n in re.findall(r"case DataType::(k\w+): return (\d+);", size_body)}
    to_float = src.split("float toFloat(void const* base, DataType t, int64_t i)", 1)[1].split("\n}\n", 1)[0]
    assert set(OUTPUT_TYPES) == set(PRECISIONS)
    for precision, (trt_type, nbytes) in OUTPUT_TYPES.items():
        assert sizes.get(trt_type) == nbytes, f"{precision}: elementSize({trt_type}) is {sizes.get(trt_type)}"
        assert f"DataType::{trt_type}" in to_float, f"{precision}: toFloat does not read {trt_type}"
