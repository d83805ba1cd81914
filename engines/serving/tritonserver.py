"""The tritonserver binary that nvidia-pytriton ships, run as a subprocess of ours (PyTriton's own code unused).

In:  a model repository (engines.serving.python_repository), a work folder, a log file, the socket folder
     (engines.serving.sockets), the restriction key, and whether to isolate it (engines.serving.sandbox).
Out: `TritonProcess`: started listening on Unix sockets only (HTTP, gRPC and metrics: no TCP port), inside
     its own network and mount namespaces unless the user trusts local users, waited for until the model is
     ready, watched (`death()`: tritonserver exited, or the model's backend stub did), stopped (SIGTERM,
     then SIGKILL). `isolation_refused()` says why this host cannot isolate it, before anything starts.
The second wall: shared-memory, model-repository, logging and trace APIs are restricted to requests that
carry RESTRICTION_HEADER with a key made afresh at each start (`--http-restricted-api`,
`--grpc-restricted-protocol`; 403 / UNAVAILABLE without it, measured on 2.51; the form `--help` prints is
rejected by the binary). The fronts never send it except on the repository index they offer. The key is on
tritonserver's command line, which every local user can read (/proc/<pid>/cmdline): it keeps out requests
that reach tritonserver through the fronts, not a local user, whom the socket folder keeps out.
What the backend needs, set in the subprocess's environment only (os.environ is never changed):
- nvidia-pytriton 0.7 ships one Python-backend stub per Python version; the one for the running
  interpreter goes into a backend folder of ours (links to the wheel's files), as the backend loads
  `<backend dir>/python/triton_python_backend_stub`;
- LD_LIBRARY_PATH: the interpreter's LIBDIR (the stub links libpython3.X) and the wheel's bundled libraries;
- the stub ignores PYTHONPATH and runs the base interpreter's site-packages (numpy 2 there, measured):
  the model's EXECUTION_ENV_PATH parameter points it at the running venv instead (python_repository);
- cwd: the project's root, so the stub imports this very roformer-trt even when it is not installed;
- numpy must be < 2 in that environment: under numpy 2 the backend answers every request with HTTP 500
  "output tensor shape does not match size of output" (measured: the stub pointed at the main venv).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from engines.serving import sandbox
from engines.serving.sockets import SocketFolder, UnixHTTPConnection
from export.errors import ServerDiedError, UnavailableError

TESTED_PYTRITON = "0.7."  # the layout below (tritonserver/, python_backend_stubs/, nvidia_pytriton.libs) is 0.7's
READY_TIMEOUT_S = 600.0  # loading the model (ONNX Runtime session in the stub) on a loaded 2-core machine
STOP_TIMEOUT_S = 10.0  # SIGTERM, then SIGKILL
STUB_NAME = "triton_python_backend_stub"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROBE_TIMEOUT_S = 60.0
RESTRICTED = "shared-memory,model-repository,logging,trace"  # what only the restriction key opens
RESTRICTION_HEADER = "x-rt-key"  # HTTP header; gRPC metadata triton-grpc-protocol-x-rt-key


@dataclass(frozen=True)
class TritonDist:
    binary: Path
    backends: Path  # the wheel's backends/ (python/libtriton_python.so, triton_python_backend_utils.py)
    stub: Path  # the stub for this interpreter's Python version
    libs: Path  # nvidia_pytriton.libs: libtritonserver and its dependencies


def find_tritonserver() -> TritonDist:
    """The tritonserver of the installed nvidia-pytriton 0.7, or UnavailableError (exit 3) saying why."""
    try:
        version = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        raise UnavailableError(
            "nvidia-pytriton is not installed; pip install 'nvidia-pytriton==0.7.*' (the roformer-trt 'serving' extra)"
        ) from None
    if not version.startswith(TESTED_PYTRITON):
        raise UnavailableError(
            f"nvidia-pytriton {version} is untested; install nvidia-pytriton==0.7.* (the roformer-trt 'serving' extra)"
        )
    numpy_major = int(importlib.metadata.version("numpy").split(".")[0])
    if numpy_major >= 2:  # the stub runs this environment (EXECUTION_ENV_PATH), so its numpy
        raise UnavailableError(
            f"numpy {importlib.metadata.version('numpy')}: tritonserver 2.51's Python backend "
            "answers every request with empty outputs under numpy 2 ('output tensor shape does "
            "not match size of output'); serve from an environment with numpy<2 (python -m venv "
            ".venv-serving && .venv-serving/bin/pip install -e '.[serving]', as .ci/run does)"
        )
    spec = importlib.util.find_spec("pytriton")  # located, not imported: none of PyTriton's code runs
    if spec is None or not spec.submodule_search_locations:  # the distribution's record without its package
        raise UnavailableError(
            f"nvidia-pytriton {version} is recorded as installed but its pytriton package is missing; "
            "reinstall nvidia-pytriton==0.7.* (the roformer-trt 'serving' extra)"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    dist = TritonDist(
        root / "tritonserver" / "bin" / "tritonserver",
        root / "tritonserver" / "backends",
        root / "tritonserver" / "python_backend_stubs" / py / STUB_NAME,
        root.parent / "nvidia_pytriton.libs",
    )
    for what, path in (
        ("tritonserver", dist.binary),
        (f"a Python {py} backend stub", dist.stub),
        ("the Python backend", dist.backends / "python" / "libtriton_python.so"),
        ("its libraries", dist.libs),
    ):
        if not path.exists():
            raise UnavailableError(
                f"nvidia-pytriton {version} has no {what} at {path}; reinstall it "
                f"(pip install --force-reinstall 'nvidia-pytriton==0.7.*')"
            )
    return dist


def backend_folder(dist: TritonDist, work: Path) -> Path:
    """`<work>/backends/python/` holding links to the wheel's backend and this Python's stub."""
    python = work / "backends" / "python"
    python.mkdir(parents=True)
    for src in sorted((dist.backends / "python").glob("*")):
        if src.is_file():
            (python / src.name).symlink_to(src)
    (python / STUB_NAME).symlink_to(dist.stub)
    return work / "backends"


def server_env(dist: TritonDist) -> dict[str, str]:
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    paths = [p for p in (libdir, str(dist.libs), env.get("LD_LIBRARY_PATH", "")) if p]
    env["LD_LIBRARY_PATH"] = ":".join(paths)
    env.pop("PYTHONPATH", None)  # the stub ignores it; keep tritonserver's own view the same
    return env


def python_env_path() -> Path | None:
    """The running venv, for the backend's EXECUTION_ENV_PATH; None outside a venv (the stub's default)."""
    return Path(sys.prefix) if sys.prefix != sys.base_prefix else None


def isolation_refused() -> str | None:
    """Why tritonserver cannot get network and mount namespaces of its own here (one line), else None."""
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", sandbox.__file__, "--probe"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"the namespace probe did not run ({type(e).__name__})"
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
    return lines[-1].removeprefix("error: ")[:300]


def triton_command(
    dist: TritonDist, repository: Path, backends: Path, sockets: SocketFolder, key: str, isolate: bool
) -> list[str]:
    """sandbox.py, then tritonserver with its options: every endpoint a Unix socket, the restrictions."""
    restriction = f"{RESTRICTED}:{RESTRICTION_HEADER}={key}"
    launcher = [sys.executable, "-I", "-S", sandbox.__file__, *([] if isolate else ["--no-namespaces"])]
    return [
        *launcher,
        "--parent",
        str(os.getpid()),
        "--",
        str(dist.binary),
        "--model-repository",
        str(repository),
        "--backend-directory",
        str(backends),
        *sockets.triton_args(),
        f"--http-restricted-api={restriction}",
        f"--grpc-restricted-protocol={restriction}",
        "--exit-timeout-secs",
        "5",
        "--strict-readiness",
        "true",
    ]


class TritonProcess:
    def __init__(
        self,
        dist: TritonDist,
        repository: Path,
        work: Path,
        log_file: Path,
        sockets: SocketFolder,
        key: str,
        isolate: bool = True,
    ):
        self.log_file, self.sockets = Path(log_file), sockets
        self.stubs: list[int] = []  # the backend stubs' pids, once the server is up
        cmd = triton_command(dist, repository, backend_folder(dist, work), sockets, key, isolate)
        self._log = open(self.log_file, "ab")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=server_env(dist),
            cwd=PROJECT_ROOT,
        )

    def wait_ready(self, model: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until `model` is ready; UnavailableError naming the log's last error when it cannot load."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UnavailableError(
                    f"tritonserver could not serve {model} ({exit_text(self.proc.returncode)}): "
                    f"{self.last_error()}; see {self.log_file}"
                )
            if self._ready(model):
                self.stubs = stub_pids(self.proc.pid)
                return
            time.sleep(0.5)
        raise UnavailableError(f"tritonserver did not get {model} ready within {timeout_s:.0f} s; see {self.log_file}")

    def _ready(self, model: str) -> bool:
        conn = UnixHTTPConnection(self.sockets.http, timeout=5)
        try:
            conn.request("GET", f"/v2/models/{model}/ready")
            return conn.getresponse().status == 200
        except OSError:  # not listening yet
            return False
        finally:
            conn.close()

    def last_error(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        errors = [ln for ln in lines if "failed to load" in ln or ln.startswith(("E", "error"))]
        return (errors[-1] if errors else (lines[-1] if lines else "no log output")).strip()[:300]

    def death(self) -> ServerDiedError | None:
        """Why the server cannot serve any more (tritonserver or a backend stub exited), else None."""
        return server_death(self.proc, self.stubs, self.log_file)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.stubs:  # a stub left behind by a killed tritonserver (it holds shared memory)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self._log.close()


def server_death(proc: subprocess.Popen, stubs: list[int], log_file: Path) -> ServerDiedError | None:
    code = proc.poll()
    if code is not None:
        return ServerDiedError(f"tritonserver exited ({exit_text(code)}); see {log_file}")
    gone = [pid for pid in stubs if not _alive(pid)]
    if gone:
        return ServerDiedError(
            f"the model's Python backend stub (pid {gone[0]}) exited, so tritonserver serves nothing; see {log_file}"
        )
    return None


def exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def stub_pids(pid: int) -> list[int]:
    """Children of tritonserver that are backend stubs (Linux /proc; [] elsewhere: then only the server is watched)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = (task / "children").read_text().split()
        except OSError:  # the thread ended meanwhile, or no /proc
            continue
        for kid in map(int, kids):
            try:
                if Path(f"/proc/{kid}/comm").read_text().strip() == STUB_NAME[:15]:
                    found.append(kid)
            except OSError:
                continue
    return sorted(set(found))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie stub is dead: tritonserver has not reaped it yet
