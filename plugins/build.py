"""Build the plugin libraries with CMake: python -m plugins.build [--tensorrt-include DIR] [--archs ...].

Runs `cmake -S plugins -B <build-dir>` then `cmake --build <build-dir> -j<jobs>`, streams CMake's progress
lines to stderr, and prints the path of every library it finds on stdout (one `name: path` per line,
or a JSON object with --json). Without TensorRT headers the adapter is skipped (CMake says why) and the
kernels and host reference are still built.

Libraries and loaders: libroformer_trt_plugin.so is for loaders that call getCreators (IPluginRegistry.load_library,
trtexec --dynamicPlugins); libroformer_trt_plugin_static.so registers itself when loaded, for loaders that only
dlopen (Triton's plugins=, LD_PRELOAD, trtexec --staticPlugins, Polygraphy --plugins). The static one links
libnvinfer: found on the system linker path, under --tensorrt-root, or in the pip wheels' tensorrt_libs/ folder.

Exit codes: 0 built; 1 the build failed; 2 usage error (cmake / nvcc missing, bad folder, headers of another
TensorRT major than the installed tensorrt package).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from export.cli import entry as cli
from export.cli.entry import Parser
from export.errors import RoformerTrtError, UsageError
from export.inputs.numbers import int_arg
from plugins import locate

EXIT_OK, EXIT_BUILD_FAILED = 0, 1
SOURCE_DIR = Path(__file__).resolve().parent
DEFAULT_ARCHS = "75;80;86;89;90"


def build_parser() -> Parser:
    p = Parser(
        prog="python -m plugins.build",
        description="Build libroformer_rotary_kernels.so, libroformer_rotary_host.so and, when TensorRT headers "
        "are found, libroformer_trt_plugin.so (+ libroformer_trt_plugin_static.so where libnvinfer is found).",
        epilog="example: python -m plugins.build --tensorrt-include /opt/tensorrt/include --archs 90",
    )
    p.add_argument("--build-dir", type=Path, default=locate.DEFAULT_BUILD_DIR, help="CMake build folder")
    p.add_argument(
        "--tensorrt-include",
        type=Path,
        default=None,
        help="folder holding NvInfer.h (default: $TensorRT_INCLUDE_DIR, else found under --tensorrt-root)",
    )
    p.add_argument(
        "--tensorrt-root",
        type=Path,
        default=None,
        help="TensorRT install root with include/ and lib/ (default: $TensorRT_ROOT)",
    )
    p.add_argument(
        "--archs",
        default=DEFAULT_ARCHS,
        help="CUDA SM archs, ';' or ',' separated; SASS for each, plus PTX for the last",
    )
    p.add_argument("--build-type", default="Release", help="CMAKE_BUILD_TYPE")
    p.add_argument("-j", "--jobs", type=int_arg(1, 1024), default=2, help="parallel build jobs")
    p.add_argument("--json", action="store_true", help="print the library paths as JSON on stdout")
    return p


def _run(cmd: list[str]) -> int:
    """Run a command, streaming its output lines to stderr (progress); returns the exit code."""
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line.rstrip("\n"), file=sys.stderr, flush=True)
    return proc.wait()


def installed_tensorrt() -> str | None:
    """Version of the `tensorrt` Python package installed here (read from its metadata, never imported), or None."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return None
    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def wheel_nvinfer(major: str | int | None = None) -> Path | None:
    """libnvinfer.so.<major> in the folder the pip `tensorrt` wheels install (tensorrt_libs/), or None.

    A system install has libnvinfer.so on the linker path, which CMake's find_library finds by itself; the
    wheels ship only the versioned file, which find_library does not find, so it is passed explicitly.
    """
    import importlib.util

    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob(f"libnvinfer.so.{major}" if major else "libnvinfer.so.[0-9]*"))
        if found:
            return found[0]
    return None


def headers_major(args: argparse.Namespace) -> str | None:
    """Major of the TensorRT headers this build will use, when they are given (--tensorrt-include / env)."""
    include = args.tensorrt_include or os.environ.get("TensorRT_INCLUDE_DIR")
    if not include and (args.tensorrt_root or os.environ.get("TensorRT_ROOT")):
        include = Path(args.tensorrt_root or os.environ["TensorRT_ROOT"]) / "include"
    version = locate.headers_version(include) if include else None
    return version.split(".")[0] if version else None


def major_mismatch(args: argparse.Namespace) -> str | None:
    """Why the headers cannot serve the installed tensorrt package (another major), or None."""
    installed = installed_tensorrt()
    built = headers_major(args)
    if installed and built and installed.split(".")[0] != built:
        return (
            f"the TensorRT headers are {built}.x but the installed tensorrt package is {installed}: a plugin "
            f"library built with them would be refused by that runtime; pass --tensorrt-include with the "
            f"TensorRT {installed.split('.')[0]} headers"
        )
    return None


def configure_command(args: argparse.Namespace) -> list[str]:
    archs = ";".join(a.strip() for a in args.archs.replace(",", ";").split(";") if a.strip())
    cmd = [
        "cmake",
        "-S",
        str(SOURCE_DIR),
        "-B",
        str(args.build_dir),
        f"-DCMAKE_BUILD_TYPE={args.build_type}",
        f"-DROFORMER_CUDA_ARCHS={archs}",
    ]
    include = args.tensorrt_include or os.environ.get("TensorRT_INCLUDE_DIR")
    root = args.tensorrt_root or os.environ.get("TensorRT_ROOT")
    if include:
        cmd.append(f"-DTensorRT_INCLUDE_DIR={Path(include).resolve()}")
    if root:
        cmd.append(f"-DTensorRT_ROOT={Path(root).resolve()}")
    elif not os.environ.get("RR_NVINFER_LIB"):
        lib = wheel_nvinfer(headers_major(args))  # pip wheels: libnvinfer.so.<major> only, in tensorrt_libs/
        if lib is not None:
            cmd.append(f"-DRR_NVINFER_LIB={lib}")
    return cmd


def built_libraries(build_dir: Path) -> dict[str, str | None]:
    """Library name -> absolute path in build_dir, or None when that library was not built."""
    names = [locate.KERNEL_LIB, locate.HOST_LIB, locate.PLUGIN_LIB, locate.STATIC_PLUGIN_LIB]
    return {n: (str((build_dir / n).resolve()) if (build_dir / n).is_file() else None) for n in names}


def find_nvcc() -> str | None:
    """nvcc from $CUDACXX, PATH, or the default toolkit folder; None when there is none."""
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).is_file():
            return cand
    return None


def missing_tools() -> list[str]:
    """Names of the build tools that are not installed (empty when cmake and nvcc are both there)."""
    return [name for name, found in (("cmake", shutil.which("cmake")), ("nvcc", find_nvcc())) if not found]


class BuildFailed(RoformerTrtError):
    """CMake's configure or build step failed; its own lines above say why."""

    exit_code = EXIT_BUILD_FAILED


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), _main, argv)


def _main(args) -> int:
    missing = missing_tools()
    if missing:
        raise UsageError(f"{', '.join(missing)} not found; install CMake >= 3.24 and the CUDA toolkit (nvcc)")
    args.build_dir = args.build_dir.resolve()
    if args.tensorrt_include is not None and not (args.tensorrt_include / "NvInfer.h").is_file():
        raise UsageError(f"{args.tensorrt_include} has no NvInfer.h; pass TensorRT's include folder")
    mismatch = major_mismatch(args)
    if mismatch:
        raise UsageError(mismatch)
    os.environ.setdefault("CUDACXX", find_nvcc() or "nvcc")  # CMake finds nvcc through CUDACXX if not on PATH
    if _run(configure_command(args)) != 0:
        raise BuildFailed("CMake configure failed (see the lines above)")
    if _run(["cmake", "--build", str(args.build_dir), f"-j{args.jobs}"]) != 0:
        raise BuildFailed("build failed (see the lines above)")
    libs = built_libraries(args.build_dir)
    if args.json:
        print(json.dumps(libs, indent=2))
    else:
        for name, path in libs.items():
            print(f"{name}: {path if path else 'not built'}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
