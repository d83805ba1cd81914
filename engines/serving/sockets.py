"""Where tritonserver listens: Unix sockets in a folder only we can open (no TCP port at all).

In:  the serving work folder (tempfile.mkdtemp: ours, 0700).
Out: `SocketFolder` (the paths of tritonserver's HTTP, gRPC and metrics sockets and the address options
     that make tritonserver 2.51 bind them), `make_socket_folder(work)`, and `UnixHTTPConnection` (an
     http.client connection to one of those sockets).
Why: tritonserver's own ports accept every API (shared-memory registration, model load, logging) from
whoever reaches them; on 127.0.0.1 that is every local user. tritonserver 2.51 takes `unix:<path>` as its
HTTP, gRPC and metrics address (libevhtp and gRPC parse it; measured): the HTTP and metrics sockets are
created at <path>, the gRPC one at `<path>:<grpc-port>` (tritonserver appends the port to the address). A
socket in a folder of mode 0700 can be connected to only by its owner (and root), so the fronts reach
tritonserver and no other local user does. The folder's owner and mode are checked after it is made: a
file system that ignores modes (some network or FUSE mounts) fails the check (exit 3).
"""

from __future__ import annotations

import http.client
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from export.errors import UnavailableError

SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the terminating NUL (Linux)
GRPC_PORT = 8001  # tritonserver appends --grpc-port to a unix: address; any number names the file


@dataclass(frozen=True)
class SocketFolder:
    folder: Path

    @property
    def http(self) -> Path:
        return self.folder / "http.sock"

    @property
    def grpc(self) -> Path:
        return self.folder / f"grpc.sock:{GRPC_PORT}"

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.sock"

    @property
    def grpc_target(self) -> str:
        """What grpc.insecure_channel takes to reach the gRPC socket."""
        return f"unix:{self.grpc}"

    def triton_args(self) -> list[str]:
        """tritonserver's address options: every endpoint a socket in this folder."""
        return [
            "--http-address",
            f"unix:{self.http}",
            "--http-port",
            "8000",  # unused for a unix: address, but validated
            "--grpc-address",
            f"unix:{self.folder / 'grpc.sock'}",
            "--grpc-port",
            str(GRPC_PORT),
            "--metrics-address",
            f"unix:{self.metrics}",
            "--metrics-port",
            "8002",  # unused for a unix: address
        ]


def make_socket_folder(work: Path) -> SocketFolder:
    """`<work>/sockets/`, mode 0700, ours; UnavailableError (exit 3) when that cannot be made private."""
    folder = Path(work) / "sockets"
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)  # mkdir's mode is cut by the umask, never widened: set it exactly
    for path in (Path(work), folder):
        st = path.stat()
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise UnavailableError(
                f"{path} is not private (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}) after making "
                "it 0700; set TMPDIR to a folder on a local file system"
            )
    sockets = SocketFolder(folder)
    longest = max(len(os.fsencode(p)) for p in (sockets.http, sockets.grpc, sockets.metrics))
    if longest > SUN_PATH_MAX:
        raise UnavailableError(
            f"the socket paths under {folder} are {longest} bytes, over the {SUN_PATH_MAX} a Unix socket takes; "
            "set TMPDIR to a shorter folder"
        )
    return sockets


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection to a Unix socket (the Host header says localhost)."""

    def __init__(self, path: Path, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock
