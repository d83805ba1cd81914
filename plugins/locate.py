"""Where the built plugin libraries are. Importable without a GPU, TensorRT or a build (no work at import).

Search order for every library: the folder named by $ROFORMER_TRT_PLUGIN_DIR (if set), then the default
build folder `plugins/build` (what `python -m plugins.build` writes). Functions return None when a library
is not there; they never build.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from export.report.schema import PluginSection
from plugins.identity import HOST_LIB, KERNEL_LIB, PLUGIN_LIB, STATIC_PLUGIN_LIB  # noqa: F401 (callers say locate.PLUGIN_LIB)

ENV_DIR = "ROFORMER_TRT_PLUGIN_DIR"
DEFAULT_BUILD_DIR = Path(__file__).resolve().parent / "build"


def search_dirs(build_dir: Path | None = None) -> list[Path]:
    """Folders searched, in order: $ROFORMER_TRT_PLUGIN_DIR, then build_dir (default plugins/build)."""
    dirs = []
    env = os.environ.get(ENV_DIR)
    if env:
        dirs.append(Path(env))
    dirs.append(Path(build_dir) if build_dir is not None else DEFAULT_BUILD_DIR)
    return dirs


def _find(name: str, build_dir: Path | None) -> Path | None:
    for d in search_dirs(build_dir):
        p = d / name
        if p.is_file():
            return p.resolve()
    return None


def find_plugin_library(build_dir: Path | None = None) -> Path | None:
    """The dynamically loaded TensorRT plugin library (IPluginRegistry.load_library / trtexec --dynamicPlugins)."""
    return _find(PLUGIN_LIB, build_dir)


def find_static_plugin_library(build_dir: Path | None = None) -> Path | None:
    """The self-registering variant linked to libnvinfer (built only where libnvinfer was found)."""
    return _find(STATIC_PLUGIN_LIB, build_dir)


def find_kernel_library(build_dir: Path | None = None) -> Path | None:
    """The CUDA kernel library with the ctypes entry point roformer_rotary_launch."""
    return _find(KERNEL_LIB, build_dir)


def find_host_library(build_dir: Path | None = None) -> Path | None:
    """The C++ host reference library (roformer_rotary_host*)."""
    return _find(HOST_LIB, build_dir)


def library_info(path: str | os.PathLike) -> dict[str, str]:
    """{"path": absolute path, "sha256": hex digest of the file}: what a run log or engine manifest records."""
    p = Path(path).resolve()
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"path": str(p), "sha256": h.hexdigest()}


def _cmake_cache(build_dir: Path) -> dict[str, str]:
    """NAME -> value of a CMakeCache.txt ({} when there is none)."""
    cache = build_dir / "CMakeCache.txt"
    if not cache.is_file():
        return {}
    out = {}
    for line in cache.read_text(errors="replace").splitlines():
        if line and not line.startswith(("#", "//")) and "=" in line and ":" in line.split("=", 1)[0]:
            key, value = line.split("=", 1)
            out[key.split(":", 1)[0]] = value
    return out


def headers_version(include_dir: str | os.PathLike) -> str | None:
    """ "major.minor.patch" from NvInferVersion.h in include_dir, None when it is not there."""
    import re

    f = Path(include_dir) / "NvInferVersion.h"
    if not f.is_file():
        return None
    found = dict(re.findall(r"#define\s+TRT_(MAJOR|MINOR|PATCH)_ENTERPRISE\s+(\d+)", f.read_text(errors="replace")))
    return ".".join(found.get(k, "0") for k in ("MAJOR", "MINOR", "PATCH")) if "MAJOR" in found else None


def plugin_library_status(build_dir: Path | None = None) -> PluginSection:
    """Whether the TensorRT plugin library is built, and if not, exactly why and what to run.

    Returns {"status": "built", "path", "sha256", "reason", "tensorrt_headers"?} or
    {"status": "unavailable", "reason"}; the reason is one or two sentences for report.md. Reads only
    files (the library, the CMakeCache.txt of the folder it was built in); never builds, never imports TensorRT.
    The headers' version is read from the cache beside the library found ($ROFORMER_TRT_PLUGIN_DIR's when it
    comes from there), so it always describes that library; none there, none reported.
    """
    bdir = Path(build_dir) if build_dir is not None else DEFAULT_BUILD_DIR
    lib = _find(PLUGIN_LIB, bdir)
    if lib is not None:
        include = _cmake_cache(lib.parent).get("TensorRT_INCLUDE_DIR") or ""
        built = library_info(lib)
        out = PluginSection(status="built", path=built["path"], sha256=built["sha256"])
        version = headers_version(include) if include else None
        out["reason"] = f"{PLUGIN_LIB} built" + (f" against TensorRT {version} headers ({include})" if version else "")
        if version:
            out["tensorrt_headers"] = version
        return out
    cache = _cmake_cache(bdir)
    include = cache.get("TensorRT_INCLUDE_DIR") or ""
    if not cache:
        return {
            "status": "unavailable",
            "reason": f"plugin library not built: {bdir} holds no CMake build; run python -m plugins.build "
            "--tensorrt-include <TensorRT include folder>",
        }
    kernels = (bdir / KERNEL_LIB).is_file()
    done = f"the CUDA kernels were built ({KERNEL_LIB}), but" if kernels else "in the last build"
    if not include or not (Path(include) / "NvInfer.h").is_file():
        why = (
            "no TensorRT headers were found "
            "(no NvInfer.h given by --tensorrt-include, $TensorRT_INCLUDE_DIR or $TensorRT_ROOT)"
        )
        return {
            "status": "unavailable",
            "reason": f"plugin library not built: {done} the TensorRT adapter ({PLUGIN_LIB}) was skipped because "
            f"{why}; point the build at them: python -m plugins.build --tensorrt-include "
            "/path/to/TensorRT/include (or --tensorrt-root /path/to/TensorRT)",
        }
    return {
        "status": "unavailable",
        "reason": f"plugin library not built: TensorRT headers were found ({include}) but {PLUGIN_LIB} is "
        f"missing from {bdir}; the build failed or was interrupted: run python -m plugins.build and read its log",
    }
