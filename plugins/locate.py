"""Where the built plugin libraries are. Importable without a GPU, TensorRT or a build (no work at import).

Search order for every library: the folder named by $ROFORMER_TRT_PLUGIN_DIR (if set), then the default
build folder `plugins/build` (what `python -m plugins.build` writes). Functions return None when a library
is not there; they never build.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

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
