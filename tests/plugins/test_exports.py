"""What each built library exports and needs (nm -D / readelf -d), and the plugins.locate helpers.

The dynamically loaded adapter must export exactly getCreators and setLoggerFinder and need nothing from
libnvinfer (TensorRT resolves it by path and hands it a logger finder); the static variant must register
through libnvinfer and export no getCreators (so it can never be registered twice). The adapter is checked as
the default build made it (skipped, with CMake's reason, where that build found no TensorRT headers) and as built
against every set of headers tests.fixtures.toolchain finds (both majors where ../shared/tensorrt-headers is).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from plugins import locate
from tests.fixtures.toolchain import headers_missing, tensorrt_include_dirs, version_of
from tests.plugins.fixtures import adapter_skip_reason, contract_build, plugin_build  # noqa: F401  (session fixture)

pytestmark = pytest.mark.skipif(
    shutil.which("nm") is None or shutil.which("readelf") is None, reason="binutils (nm, readelf) not installed"
)


def defined(lib: Path) -> set[str]:
    """Dynamic symbols the library defines, without version suffixes; C++-mangled (_Z...) names excluded."""
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True)
    names = {line.split()[-1].split("@")[0] for line in out.stdout.splitlines() if line.strip()}
    return {n for n in names if not n.startswith("_")}


def undefined(lib: Path) -> set[str]:
    out = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], capture_output=True, text=True, check=True)
    return {line.split()[-1].split("@")[0] for line in out.stdout.splitlines() if line.strip()}


def needed(lib: Path) -> list[str]:
    out = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True)
    return [line.split("[", 1)[1].rstrip("]") for line in out.stdout.splitlines() if "(NEEDED)" in line]


def test_host_library_is_plain_cpp(plugin_build):  # noqa: F811
    lib = plugin_build.require(locate.HOST_LIB, "see the CMake log")
    assert defined(lib) == {
        "roformer_rotary_host",
        "roformer_rotary_host_check",
        "roformer_rotary_host_float_to_half",
        "roformer_rotary_host_float_to_bf16",
        "roformer_rotary_host_half_to_float",
    }
    assert not any("cuda" in n.lower() for n in needed(lib)), needed(lib)
    assert not any(n.startswith("cuda") for n in undefined(lib))


def test_kernel_library_exports_only_the_launcher(plugin_build):  # noqa: F811
    lib = plugin_build.require(locate.KERNEL_LIB, "see the CMake log")
    assert defined(lib) == {"roformer_rotary_launch"}
    # cudart is linked statically and hidden: no libcudart.so.N needed (torch brings its own), no nvinfer.
    assert not any("cudart" in n or "nvinfer" in n for n in needed(lib)), needed(lib)


def test_dynamic_plugin_exports_getcreators_and_setloggerfinder_only(plugin_build):  # noqa: F811
    check_dynamic_plugin(plugin_build.require(locate.PLUGIN_LIB, adapter_skip_reason(plugin_build)))


HEADERS = tensorrt_include_dirs()


@pytest.mark.skipif(not HEADERS, reason=headers_missing())
@pytest.mark.parametrize("include", HEADERS, ids=[version_of(h) for h in HEADERS])
def test_dynamic_plugin_exports_for_every_tensorrt_major(include):
    check_dynamic_plugin(contract_build(include) / locate.PLUGIN_LIB)


def check_dynamic_plugin(lib: Path) -> None:
    # + the TensorRT major it was built against (plugins.build and engines.build compare it with the runtime)
    assert defined(lib) == {"getCreators", "setLoggerFinder", "roformer_trt_plugin_tensorrt_major"}
    need = needed(lib)
    assert not any("nvinfer" in n for n in need), need
    und = undefined(lib)
    # What a libnvinfer dependency would look like: a call into the runtime or its global registry/logger.
    from_trt = {n for n in und if "nvinfer" in n or n in {"getPluginRegistry", "getLogger", "getInferLibVersion"}}
    assert not from_trt, from_trt


def test_static_plugin_registers_through_libnvinfer(plugin_build):  # noqa: F811
    lib = plugin_build.require(
        locate.STATIC_PLUGIN_LIB, "libnvinfer was not found at build time (set TensorRT_ROOT to an install)"
    )
    assert defined(lib) == {"roformer_trt_plugin_tensorrt_major"}
    assert "getPluginRegistry" in undefined(lib)
    assert any("nvinfer" in n for n in needed(lib)), needed(lib)


def test_locate_finds_the_built_libraries(plugin_build, monkeypatch):  # noqa: F811
    monkeypatch.setenv(locate.ENV_DIR, str(plugin_build.build_dir))
    finders = {
        locate.KERNEL_LIB: locate.find_kernel_library,
        locate.HOST_LIB: locate.find_host_library,
        locate.PLUGIN_LIB: locate.find_plugin_library,
    }
    built = {name: path for name, path in plugin_build.libs.items() if name in finders and path is not None}
    assert built, "nothing was built"
    for name, path in built.items():
        assert finders[name]() == path.resolve()


def test_locate_honours_env_dir_first(tmp_path, monkeypatch):
    (tmp_path / locate.PLUGIN_LIB).write_bytes(b"not a library, only a path test")
    monkeypatch.setenv(locate.ENV_DIR, str(tmp_path))
    assert locate.find_plugin_library() == (tmp_path / locate.PLUGIN_LIB).resolve()
    assert locate.search_dirs()[0] == tmp_path
    empty = tmp_path / "empty"
    empty.mkdir()
    assert locate.find_plugin_library(build_dir=empty) == (tmp_path / locate.PLUGIN_LIB).resolve()
    monkeypatch.setenv(locate.ENV_DIR, str(empty))
    assert locate.find_static_plugin_library(build_dir=empty) is None


def test_library_info_hashes_the_file(tmp_path):
    p = tmp_path / "lib.so"
    p.write_bytes(b"\x7fELF" + bytes(range(256)) * 5000)
    info = locate.library_info(p)
    assert info == {"path": str(p.resolve()), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}


def test_plugin_library_status_says_what_happened(tmp_path, monkeypatch):
    monkeypatch.delenv(locate.ENV_DIR, raising=False)
    st = locate.plugin_library_status(tmp_path)
    assert st["status"] == "unavailable" and "python -m plugins.build" in st["reason"]
    # What README's set-up leaves behind: a CMake build with the kernels, no headers, no adapter.
    (tmp_path / "CMakeCache.txt").write_text("//doc\nTensorRT_INCLUDE_DIR:PATH=\nCMAKE_BUILD_TYPE:STRING=Release\n")
    (tmp_path / locate.KERNEL_LIB).write_bytes(b"x")
    st = locate.plugin_library_status(tmp_path)
    assert st["status"] == "unavailable"
    assert "kernels were built" in st["reason"] and "no TensorRT headers" in st["reason"]
    assert "--tensorrt-include" in st["reason"]
    inc = tmp_path / "include"
    inc.mkdir()
    (inc / "NvInfer.h").write_text("")
    (inc / "NvInferVersion.h").write_text(
        "#define TRT_MAJOR_ENTERPRISE 11\n#define TRT_MINOR_ENTERPRISE 1\n#define TRT_PATCH_ENTERPRISE 0\n"
    )
    (tmp_path / "CMakeCache.txt").write_text(f"TensorRT_INCLUDE_DIR:PATH={inc}\n")
    assert "failed or was interrupted" in locate.plugin_library_status(tmp_path)["reason"]
    (tmp_path / locate.PLUGIN_LIB).write_bytes(b"lib")
    st = locate.plugin_library_status(tmp_path)
    assert st["status"] == "built" and st["sha256"] == hashlib.sha256(b"lib").hexdigest()
    assert st["tensorrt_headers"] == "11.1.0" and "11.1.0" in st["reason"]


def _headers(folder, major: int, minor: int):
    """A fake include folder (NvInfer.h, NvInferVersion.h) and a CMakeCache.txt in `folder` pointing at it."""
    inc = folder / f"include-{major}"
    inc.mkdir(parents=True)
    (inc / "NvInfer.h").write_text("")
    (inc / "NvInferVersion.h").write_text(
        f"#define TRT_MAJOR_ENTERPRISE {major}\n#define TRT_MINOR_ENTERPRISE {minor}\n#define TRT_PATCH_ENTERPRISE 0\n"
    )
    (folder / "CMakeCache.txt").write_text(f"TensorRT_INCLUDE_DIR:PATH={inc}\n")


def test_plugin_library_status_reads_the_headers_of_the_library_it_found(tmp_path, monkeypatch):
    """A library from $ROFORMER_TRT_PLUGIN_DIR is described by its own build's cache, not the default folder's."""
    default, prebuilt = tmp_path / "build", tmp_path / "prebuilt"
    _headers(default, 11, 1)
    (default / locate.PLUGIN_LIB).write_bytes(b"default")
    prebuilt.mkdir()
    (prebuilt / locate.PLUGIN_LIB).write_bytes(b"prebuilt")
    monkeypatch.setenv(locate.ENV_DIR, str(prebuilt))
    st = locate.plugin_library_status(default)
    assert st["path"] == str((prebuilt / locate.PLUGIN_LIB).resolve())
    assert "tensorrt_headers" not in st and "11.1" not in st["reason"]  # no cache beside it: no version claimed
    _headers(prebuilt, 10, 16)
    st = locate.plugin_library_status(default)
    assert st["tensorrt_headers"] == "10.16.0" and "10.16.0" in st["reason"]
    monkeypatch.delenv(locate.ENV_DIR)
    st = locate.plugin_library_status(default)
    assert st["path"] == str((default / locate.PLUGIN_LIB).resolve()) and st["tensorrt_headers"] == "11.1.0"
