"""The C++ builds the plugin tests need, each made once per test session, and started in the background when the
session begins so they compile while the Python tests run (the whole suite spends most of its time on one core).

A build (`CppBuild`: a folder and the commands that fill it) runs under a lock on its folder, so two pytest
processes (pytest-xdist workers, or two people on one checkout) never write one CMake folder at once; a marker in
the folder records the session that built it and whether it succeeded, so a fixture that finds the folder built by
this session (in the background, or by another worker) uses it without running CMake again.

`start(config)` (tests/conftest.py calls it from pytest_configure, in the controlling process only) starts every
build the plugin tests use, one after another with `-j2`, when the run includes tests/plugins and the tools are
installed; `stop()` ends the one still running when the session ends early. `ensure(build)` is what a fixture
calls: the build's (ok, log), waiting for the background when it is on this build.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from plugins import build as plugin_build_cli
from plugins import locate
from tests.fixtures.toolchain import tensorrt_include_dirs, version_of

REPO_ROOT = Path(__file__).resolve().parents[2]
SESSION_ENV = "ROFORMER_TRT_TEST_SESSION"  # set once by the controlling process; pytest-xdist workers inherit it
MARKER = ".test-session.json"
SANITIZE_BUILD_DIR = locate.DEFAULT_BUILD_DIR / "sanitize"
GRID_TARGET = "roformer_rotary_kernel_grid_test"
CONTRACT_TARGETS = (
    "roformer_trt_plugin",
    "roformer_trt_contract_test",
    "roformer_trt_stub_runtime",
    "roformer_trt_plugin_static_on_stub",
)


@dataclass(frozen=True)
class CppBuild:
    name: str
    build_dir: Path
    commands: tuple[tuple[str, ...], ...]
    env: tuple[tuple[str, str], ...] = ()
    timeout_s: int = 1800


def default_build() -> CppBuild:
    """`python -m plugins.build` into plugins/build, every CUDA arch of its default (or $ROFORMER_CUDA_ARCHS)."""
    cmd = [sys.executable, "-m", "plugins.build", "--build-dir", str(locate.DEFAULT_BUILD_DIR)]
    if os.environ.get("ROFORMER_CUDA_ARCHS"):
        cmd += ["--archs", os.environ["ROFORMER_CUDA_ARCHS"]]
    return CppBuild("default", locate.DEFAULT_BUILD_DIR, (tuple(cmd),))


def cmake_build(name: str, build_dir: Path, targets: tuple[str, ...], defines: dict[str, str]) -> CppBuild:
    """Configure plugins/ into build_dir with -D defines (one CUDA arch: these builds run on the CPU) and build
    only `targets`."""
    conf = ["cmake", "-S", str(plugin_build_cli.SOURCE_DIR), "-B", str(build_dir)]
    conf += ["-DROFORMER_CUDA_ARCHS=" + os.environ.get("ROFORMER_CUDA_ARCHS", "90")]
    conf += [f"-D{k}={v}" for k, v in defines.items()]
    make = ["cmake", "--build", str(build_dir), "-j2", "--target", *targets]
    cudacxx = os.environ.get("CUDACXX") or plugin_build_cli.find_nvcc() or "nvcc"
    return CppBuild(name, build_dir, (tuple(conf), tuple(make)), env=(("CUDACXX", cudacxx),), timeout_s=900)


def contract_build(include: Path, sanitize: bool = False) -> CppBuild:
    """The adapter, its contract test and the stub runtime against one set of TensorRT headers."""
    name = f"contract-{version_of(include)}{'-sanitize' if sanitize else ''}"
    defines = {"TensorRT_INCLUDE_DIR": str(include.resolve()), "ROFORMER_TRT_SANITIZE": "ON" if sanitize else "OFF"}
    return cmake_build(name, locate.DEFAULT_BUILD_DIR / name, CONTRACT_TARGETS, defines)


def grid_sanitize_build() -> CppBuild:
    """The kernel-grid test under AddressSanitizer + UBSan."""
    return cmake_build("sanitize", SANITIZE_BUILD_DIR, (GRID_TARGET,), {"ROFORMER_TRT_SANITIZE": "ON"})


def all_builds() -> list[CppBuild]:
    """Every build tests/plugins uses, in the order its modules need them."""
    heads = tensorrt_include_dirs()
    return [
        default_build(),
        *(contract_build(h) for h in heads),
        *(contract_build(h, sanitize=True) for h in heads),
        grid_sanitize_build(),
    ]


@contextlib.contextmanager
def _locked(build_dir: Path):
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".test-session.lock", "a") as f:  # inside the (ignored) build folder
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class _Background:
    thread: threading.Thread | None = None
    proc: subprocess.Popen | None = None
    stopping: bool = False
    results: dict[str, tuple[bool, str]] = field(default_factory=dict)


_BG = _Background()


def _run(build: CppBuild) -> tuple[bool, str]:
    env = {**os.environ, **dict(build.env)}
    log = ""
    for cmd in build.commands:
        if _BG.stopping and threading.current_thread() is _BG.thread:
            return False, log + "\nstopped: the session ended"
        proc = subprocess.Popen(  # its own process group: stop() ends the compilers with it
            list(cmd),
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        if threading.current_thread() is _BG.thread:
            _BG.proc = proc
        try:
            out, _ = proc.communicate(timeout=build.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return False, log + out + f"\ntimed out after {build.timeout_s} s: {' '.join(cmd)}"
        log += f"+ {' '.join(cmd)}\n{out}"
        if proc.returncode != 0:
            return False, log + f"\nexit {proc.returncode}: {' '.join(cmd)}"
    return True, log


def ensure(build: CppBuild) -> tuple[bool, str]:
    """(ok, log) of `build`, made once per session: under its folder's lock, unless this session's marker says
    it is made."""
    session = os.environ.setdefault(SESSION_ENV, uuid.uuid4().hex)
    marker = build.build_dir / MARKER
    with _locked(build.build_dir):
        try:
            done = json.loads(marker.read_text())
            if done.get("session") == session:
                return bool(done["ok"]), str(done["log"])
        except (OSError, ValueError, KeyError):
            pass
        ok, log = _run(build)
        if not (_BG.stopping and not ok):  # a build cut short by the session's end is no result
            marker.write_text(json.dumps({"session": session, "ok": ok, "log": log[-20000:]}))
        return ok, log


def wanted(config) -> bool:
    """True when this run includes tests/plugins (its arguments name it, a folder above it, or a file in it) and
    selects no tests with -k or -m (those build what they use, when they use it)."""
    if config.option.keyword or config.option.markexpr:
        return False
    plugins = (REPO_ROOT / "tests" / "plugins").resolve()
    for arg in config.args or [str(REPO_ROOT / "tests")]:
        path = Path(str(arg).split("::")[0])
        path = (Path(config.invocation_params.dir) / path).resolve()
        if path == plugins or plugins.is_relative_to(path) or path.is_relative_to(plugins):
            return True
    return False


def start(config) -> None:
    """Start every build in a background thread (controlling process only; tools present; nothing prebuilt)."""
    os.environ.setdefault(SESSION_ENV, uuid.uuid4().hex)
    if hasattr(config, "workerinput") or os.environ.get(locate.ENV_DIR) or plugin_build_cli.missing_tools():
        return
    if not wanted(config):
        return

    def run_all():
        for build in all_builds():
            if _BG.stopping:
                return
            _BG.results[build.name] = ensure(build)

    _BG.thread = threading.Thread(target=run_all, name="cpp-builds", daemon=True)
    _BG.thread.start()
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _stop_and_die)  # a killed session takes its compilers with it


def _stop_and_die(signum, frame):
    stop()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def stop() -> None:
    """End the background build still running (the session is over); wait for the thread."""
    if _BG.thread is None:
        return
    _BG.stopping = True
    if _BG.proc is not None and _BG.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(_BG.proc.pid, signal.SIGTERM)
    _BG.thread.join(timeout=60)
