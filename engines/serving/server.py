"""Live serving of a build on Triton (CPU): our model repository, tritonserver on Unix sockets, our fronts.

In:  a build folder, a pooling mode, the public host and ports, --max-batch, ONNX Runtime threads, and
     whether the user trusts the other local users of this machine.
Out: `serve(...)`, a context manager yielding {"model", "http", "grpc", "log", "repository", "sockets"}
     and, as "server", the TritonProcess (its `death()` is what the watchdog polls).

    build --> python_repository (config.pbtxt, model.py, model.onnx) --> tritonserver (sandbox.py)
    clients --> http_front (host:http-port) / grpc_front (host:grpc-port) --> <work>/sockets/ --> tritonserver

Only the fronts listen on a TCP port. tritonserver listens on Unix sockets in a folder of ours, mode 0700
(engines.serving.sockets), from network and mount namespaces of its own (engines.serving.sandbox), so no
other local user reaches its APIs or reads its shared memory; where this host cannot give it those
namespaces, serving is refused (exit 3) unless `trust_local_users`. A refused request is HTTP 400 / gRPC
INVALID_ARGUMENT with one line, from a front (declarations: request_limits; parameters:
request_parameters) or from the model (backend_model.py: lengths, values). On exit the server is stopped
and the temporary repository removed; the log is kept.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from engines.serving.grpc_front import require_grpc, start_grpc_front
from engines.serving.http_front import HttpFront
from engines.serving.ort_model import load_build
from engines.serving.python_repository import write_python_repository
from engines.serving.request_limits import request_cap
from engines.serving.sockets import make_socket_folder
from engines.serving.tritonserver import TritonProcess, find_tritonserver, isolation_refused, python_env_path
from engines.triton.config import prompts_parameter, read_onnx_io
from export.errors import UnavailableError, UsageError
from export.report.verdict import read_build

log = logging.getLogger(__name__)


TRUST_FLAG = "--trust-local-users"


def check_runtime() -> None:
    """Raise UnavailableError (exit 3) when tritonserver or the fronts cannot run in this environment."""
    find_tritonserver()
    require_grpc()


def check_isolation(trust_local_users: bool) -> bool:
    """Whether tritonserver gets namespaces of its own; UnavailableError (exit 3) when it cannot and the
    user did not accept the risk."""
    refused = isolation_refused()
    if refused is None:
        return True
    if not trust_local_users:
        raise UnavailableError(
            f"cannot keep tritonserver from the other local users here ({refused}); without namespaces of its "
            f"own every local user can read the request tensors in its /dev/shm regions; pass {TRUST_FLAG} "
            "to serve anyway"
        )
    log.warning("serving without namespaces (%s, %s): local users can read /dev/shm", refused, TRUST_FLAG)
    return False


@contextlib.contextmanager
def serve(
    build: Path,
    pooling: str | None = None,  # None: the family's default (ort_model.load_build)
    host: str = "127.0.0.1",
    http_port: int | None = None,
    grpc_port: int | None = None,
    max_batch: int = 8,
    threads: int | None = None,
    repository: Path | None = None,
    log_file: Path | None = None,
    trust_local_users: bool = False,
) -> Iterator[dict]:
    """Serve `build` until the block exits. Port None (or 0): a free one."""
    model, limits, name = load_build(build, pooling)  # usage errors (exit 2) before anything starts
    extra = prompts_parameter(read_build(Path(build)).model)  # the family's text prefixes, for engines.client
    dist = find_tritonserver()  # then availability (exit 3)
    require_grpc()
    isolate = check_isolation(trust_local_users)
    name = f"{name}_onnx"
    work = Path(tempfile.mkdtemp(prefix="roformer-trt-serving-"))
    log_file = Path(log_file) if log_file else work / "tritonserver.log"
    own_repository = repository is None
    repo = Path(repository) if repository is not None else work / "repository"
    server = grpc_server = channel = front = None
    key = secrets.token_urlsafe(32)  # the second wall's key: made afresh, sent only for the repository index
    try:
        sockets = make_socket_folder(work)
        write_python_repository(repo, name, model, limits, max_batch, threads, python_env_path(), extra)
        cap = request_cap(read_onnx_io(model)[0], limits.max_sequence, max_batch)
        del model  # the stub loads its own copy; this process keeps only the fronts
        front = _listen_http(host, http_port or 0, sockets, cap, key)  # a taken port: exit 2 now
        public_grpc = grpc_port or _free_port(host)
        _check_free(host, public_grpc)
        server = TritonProcess(dist, repo, work, log_file, sockets, key, isolate)  # before gRPC starts threads
        grpc_server, channel, public_grpc = _listen_grpc(host, public_grpc, sockets.grpc_target, cap, key)
        server.wait_ready(name)
        front.start()
        urls = {
            "model": name,
            "http": f"{host}:{front.server_address[1]}",
            "grpc": f"{host}:{public_grpc}",
            "log": str(log_file),
            "repository": str(repo),
            "sockets": str(sockets.folder),
            "server": server,
        }
        log.info("serving %s: http %s, grpc %s; server log %s", name, urls["http"], urls["grpc"], log_file)
        yield urls
    finally:
        if front is not None:
            front.stop()
        if grpc_server is not None:
            grpc_server.stop(grace=None)
        if channel is not None:  # made with grpc_server
            channel.close()
        if server is not None:
            server.stop()
        shutil.rmtree(work / "backends", ignore_errors=True)  # ours: links into the wheel
        shutil.rmtree(work / "sockets", ignore_errors=True)  # ours: the sockets tritonserver left
        if own_repository:
            shutil.rmtree(repo, ignore_errors=True)  # ours: a copy of the build's graph
        if server is None:  # tritonserver never started: no log worth keeping, the folder is ours and empty
            shutil.rmtree(work, ignore_errors=True)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _listen_http(host: str, port: int, sockets, cap, key: str) -> HttpFront:
    try:
        return HttpFront((host, port), sockets, cap, key)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port} for HTTP ({e.strerror}); pass a free --http-port") from None


def _check_free(host: str, port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UsageError(
                f"cannot listen on {host}:{port} for gRPC ({e.strerror}); pass a free --grpc-port"
            ) from None


def _listen_grpc(host: str, port: int, upstream: str, cap, key: str):
    try:
        return start_grpc_front(f"{host}:{port}", upstream, cap, key)
    except (OSError, RuntimeError) as e:
        raise UsageError(f"cannot listen on {host}:{port} for gRPC ({e}); pass a free --grpc-port") from None
