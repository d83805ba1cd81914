"""Session fixture that builds the plugin libraries once for the tests/plugins/ modules.

Import it in a test module with `from tests.plugins.fixtures import plugin_build  # noqa: F401`. Behaviour:
  - $ROFORMER_TRT_PLUGIN_DIR set: use the libraries already built there, build nothing;
  - else `python -m plugins.build` into plugins/build (incremental: a re-run only relinks what changed),
    with $ROFORMER_CUDA_ARCHS (default: the build's own) and $TensorRT_INCLUDE_DIR / $TensorRT_ROOT if set;
  - cmake or nvcc missing: every test that needs a library is skipped, with that reason (a failure with
    ROFORMER_TRT_REQUIRE_PLUGIN_TOOLS=1, as in .ci/run).
`contract_build(include)` builds the TensorRT adapter and its contract test against one set of TensorRT headers
(tests.fixtures.toolchain.tensorrt_include_dirs) into plugins/build/contract-<version>[-sanitize].
Every build is made once per session (tests/plugins/builds.py), usually in the background before its tests run.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from plugins import build as plugin_build_cli
from plugins import locate
from tests.fixtures.toolchain import REQUIRE_TOOLS_ENV, skip_or_fail
from tests.plugins import builds


@dataclass
class PluginBuild:
    build_dir: Path
    libs: dict[str, Path | None]  # library file name -> path, None when not built
    log: str = ""  # CMake's output (says why the adapter was skipped)
    skip_reason: str | None = None  # set when nothing could be built
    notes: list[str] = field(default_factory=list)

    def require(self, name: str, why_missing: str) -> Path:
        """The library's path, or pytest.skip with the reason it is absent."""
        if self.skip_reason:
            pytest.skip(self.skip_reason)
        path = self.libs.get(name)
        if path is None:
            pytest.skip(f"{name} was not built: {why_missing}")
        return path


def _collect(build_dir: Path) -> dict[str, Path | None]:
    names = [locate.KERNEL_LIB, locate.HOST_LIB, locate.PLUGIN_LIB, locate.STATIC_PLUGIN_LIB]
    return {n: (build_dir / n if (build_dir / n).is_file() else None) for n in names}


@pytest.fixture(scope="session")
def plugin_build() -> PluginBuild:
    prebuilt = os.environ.get(locate.ENV_DIR)
    if prebuilt:
        d = Path(prebuilt).resolve()
        return PluginBuild(d, _collect(d), notes=[f"prebuilt libraries from ${locate.ENV_DIR}={d}"])
    missing = plugin_build_cli.missing_tools()
    if missing:
        why = (
            f"cannot build the plugins: {', '.join(missing)} not installed (CI needs cmake >= 3.24 and the CUDA "
            "toolkit's nvcc)"
        )
        if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
            pytest.fail(f"{REQUIRE_TOOLS_ENV}=1 but {why}", pytrace=False)
        return PluginBuild(locate.DEFAULT_BUILD_DIR, {}, skip_reason=why)
    ok, log = builds.ensure(builds.default_build())
    if not ok:
        pytest.fail(f"python -m plugins.build failed:\n{log[-6000:]}")
    return PluginBuild(locate.DEFAULT_BUILD_DIR, _collect(locate.DEFAULT_BUILD_DIR), log=log)


def adapter_skip_reason(build: PluginBuild) -> str:
    """Why libroformer_trt_plugin.so is absent, quoting CMake's own message when there is one."""
    for line in build.log.splitlines():
        if "roformer_trt:" in line and "skipped" in line:
            return line.split("roformer_trt:", 1)[1].strip()
    return "no TensorRT headers (set TensorRT_INCLUDE_DIR to a folder holding NvInfer.h and rebuild)"


def built(build: builds.CppBuild) -> Path:
    """The folder of `build`, made once per session; skip (or fail, tools required) without cmake or nvcc."""
    if plugin_build_cli.missing_tools():
        skip_or_fail(f"cannot build: {', '.join(plugin_build_cli.missing_tools())} not installed")
    ok, log = builds.ensure(build)
    assert ok, log[-6000:]
    return build.build_dir


def contract_build(include: Path, sanitize: bool = False) -> Path:
    """Build folder of the adapter, its contract test and the stub runtime for these headers (once per session)."""
    return built(builds.contract_build(include, sanitize))


def sanitizer_supported() -> str | None:
    """None when the C++ compiler can link an ASan+UBSan program here, else why not."""
    import shutil
    import tempfile

    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        return "no C++ compiler"
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "t.cpp"
        src.write_text("int main() { return 0; }\n")
        proc = subprocess.run(
            [cxx, "-fsanitize=address,undefined", str(src), "-o", str(Path(d) / "t")], capture_output=True, text=True
        )
        if proc.returncode != 0:
            return f"{cxx} cannot build with -fsanitize=address,undefined: {proc.stderr.strip()[:200]}"
        run = subprocess.run([str(Path(d) / "t")], capture_output=True, text=True)
        if run.returncode != 0:
            return f"an ASan program does not run here: {run.stderr.strip()[:200]}"
    return None


def bind_launch(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declares roformer_rotary_launch's C signature (roformerRotaryKernel.h) on a loaded kernel library:
    (dtype, interleaved, k, x[k], y[k], sincos, B, H[k], S, Dh, R, P, stream) -> cudaError_t."""
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.roformer_rotary_launch.restype = ctypes.c_int
    lib.roformer_rotary_launch.argtypes = [ctypes.c_int] * 3 + [ptr] * 3 + [i64, ptr] + [i64] * 4 + [ptr]
    return lib
