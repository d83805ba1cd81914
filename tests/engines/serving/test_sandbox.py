"""Keeping tritonserver from the other local users, without tritonserver: the launcher (sandbox.py) gives a
program a network with nothing up and a /dev/shm of its own, as this user and, when the tests run as root,
as an unprivileged user (`nobody`); the socket folder is private; tritonserver's command line names no TCP
address; a host that cannot isolate it refuses to serve (exit 3) unless the user trusts local users."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from engines.serving import sandbox
from engines.serving.server import TRUST_FLAG, check_isolation
from engines.serving.sockets import SUN_PATH_MAX, make_socket_folder
from engines.serving.tritonserver import RESTRICTED, TritonDist, isolation_refused, triton_command
from export.errors import EXIT_UNAVAILABLE, UnavailableError
from tests.engines.serving.local_attacker import python_for

LINUX = Path("/proc/self/ns/net").exists()
NOBODY = 65534

# Run inside the sandbox: what the program there sees of /dev/shm and of the network.
INSIDE = """
import json, os, socket, sys
name = sys.argv[1]
with open("/dev/shm/" + name, "w") as f:
    f.write("x")
s = socket.socket()
try:
    s.connect(("127.0.0.1", 9))
    net = "connected"
except OSError as e:
    net = e.strerror
print(json.dumps({"shm": os.listdir("/dev/shm"), "shm_mode": oct(os.stat("/dev/shm").st_mode & 0o777), "net": net,
                  "uid": os.getuid()}))
"""


def launcher(python: str) -> list[str]:
    """sandbox.py run from its text (`-c`): another user may not be able to open the checkout's folders."""
    return [python, "-I", "-S", "-c", Path(sandbox.__file__).read_text()]


def run_inside(python: str, user: int | None = None) -> tuple[subprocess.CompletedProcess, str]:
    name = f"roformer-sandbox-test-{uuid.uuid4()}"
    cmd = [*launcher(python), "--parent", str(os.getpid()), "--", python, "-I", "-S", "-c", INSIDE]
    ids = {} if user is None else {"user": user, "group": user, "extra_groups": []}
    done = subprocess.run([*cmd, name], capture_output=True, text=True, timeout=60, cwd="/", **ids)
    return done, name


def check_isolated(done: subprocess.CompletedProcess, name: str, uid: int) -> None:
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["shm"] == [name] and seen["shm_mode"] == "0o700" and seen["uid"] == uid, seen
    assert seen["net"] == "Network is unreachable", seen  # no interface up: no TCP port to reach
    assert not Path("/dev/shm", name).exists()  # the host's /dev/shm never saw it


@pytest.mark.skipif(not LINUX, reason="network and mount namespaces are Linux's")
def test_the_launcher_isolates_a_program_as_this_user():
    reason = isolation_refused()
    if reason is not None:
        pytest.skip(f"this host gives no namespaces to this user: {reason} (engines.serving refuses to serve here)")
    done, name = run_inside(sys.executable)
    check_isolated(done, name, os.getuid())


@pytest.mark.skipif(not LINUX or os.geteuid() != 0, reason="becoming an unprivileged user takes root")
def test_the_launcher_isolates_a_program_as_an_unprivileged_user():
    """The path every non-root user takes: an unprivileged user namespace first (where the host allows one)."""
    python = python_for(NOBODY)
    if python is None:
        pytest.skip("no Python interpreter that user nobody can run")
    probe = subprocess.run(
        [*launcher(python), "--probe"],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        assert probe.returncode == EXIT_UNAVAILABLE and probe.stderr.startswith("error: "), probe.stderr
        pytest.skip(f"this host gives unprivileged users no namespaces: {probe.stderr.strip()}")
    done, name = run_inside(python, NOBODY)
    check_isolated(done, name, NOBODY)


def test_a_host_that_cannot_isolate_refuses_to_serve(monkeypatch):
    import engines.serving.server as server

    monkeypatch.setattr(
        server, "isolation_refused", lambda: "unshare(network, mount, user namespaces): Operation not permitted"
    )
    with pytest.raises(UnavailableError) as e:
        check_isolation(trust_local_users=False)
    assert e.value.exit_code == EXIT_UNAVAILABLE
    assert "Operation not permitted" in str(e.value) and TRUST_FLAG in str(e.value) and "/dev/shm" in str(e.value)
    assert check_isolation(trust_local_users=True) is False
    monkeypatch.setattr(server, "isolation_refused", lambda: None)
    assert check_isolation(trust_local_users=False) is True


def test_the_socket_folder_is_private_and_its_paths_fit(tmp_path):
    old = os.umask(0)  # a permissive umask changes nothing
    try:
        sockets = make_socket_folder(tmp_path)
    finally:
        os.umask(old)
    st = sockets.folder.stat()
    assert st.st_uid == os.geteuid() and st.st_mode & 0o777 == 0o700
    deep = tmp_path / ("d" * (SUN_PATH_MAX - len(str(tmp_path))))
    deep.mkdir(mode=0o700)
    with pytest.raises(UnavailableError, match="over the 107 a Unix socket takes; set TMPDIR to a shorter folder"):
        make_socket_folder(deep)


def test_tritonserver_listens_on_no_tcp_address(tmp_path):
    sockets = make_socket_folder(tmp_path)
    dist = TritonDist(Path("/x/tritonserver"), Path("/x/backends"), Path("/x/stub"), Path("/x/libs"))
    cmd = triton_command(dist, tmp_path / "repo", tmp_path / "backends", sockets, "k3y", isolate=True)
    program = cmd[cmd.index("--") + 1 :]
    assert program[0] == "/x/tritonserver" and cmd[:4] == [sys.executable, "-I", "-S", sandbox.__file__]
    addresses = {flag: program[program.index(flag) + 1] for flag in program if flag.endswith("-address")}
    assert addresses == {
        "--http-address": f"unix:{sockets.http}",
        "--grpc-address": f"unix:{sockets.folder / 'grpc.sock'}",
        "--metrics-address": f"unix:{sockets.metrics}",
    }
    assert f"--http-restricted-api={RESTRICTED}:x-rt-key=k3y" in program
    assert f"--grpc-restricted-protocol={RESTRICTED}:x-rt-key=k3y" in program
    trusted = triton_command(dist, tmp_path / "repo", tmp_path / "backends", sockets, "k3y", isolate=False)
    assert trusted[4] == "--no-namespaces" and trusted[trusted.index("--") + 1 :] == program
