"""Without cmake the plugin tests skip with the reason; with ROFORMER_TRT_REQUIRE_PLUGIN_TOOLS=1 (set by .ci/run)
the same run fails, so CI cannot pass by skipping them.

The missing tool is simulated: a child pytest whose PATH is an empty folder (Python is started by its full path),
so `cmake` is not found; nvcc may still be, one missing tool is enough."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from plugins import locate
from tests.fixtures.toolchain import REQUIRE_TOOLS_ENV

ROOT = Path(__file__).resolve().parents[2]
PROBED = "tests/plugins/test_kernel_grid.py::test_kernel_grid_on_cpu"


def run_without_cmake(tmp_path: Path, require: bool) -> subprocess.CompletedProcess:
    empty = tmp_path / "empty-path"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in (REQUIRE_TOOLS_ENV, locate.ENV_DIR)}
    env["PATH"] = str(empty)
    if require:
        env[REQUIRE_TOOLS_ENV] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", PROBED],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_missing_cmake_skips_with_the_reason(tmp_path):
    r = run_without_cmake(tmp_path, require=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "1 skipped" in out, out[-3000:]
    assert "cannot build the plugins: cmake" in out, out[-3000:]


def test_missing_cmake_fails_when_tools_are_required(tmp_path):
    r = run_without_cmake(tmp_path, require=True)
    out = r.stdout + r.stderr
    assert r.returncode not in (0, 5), out[-3000:]  # 5: nothing collected, which would also hide it
    assert f"{REQUIRE_TOOLS_ENV}=1 but cannot build the plugins: cmake" in out, out[-3000:]
