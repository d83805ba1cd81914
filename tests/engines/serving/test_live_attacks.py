"""The live server (conftest.py's, shared) under the attacks of issue 27: a local user who reads every
tritonserver command line and /dev/shm and tries the shared-memory registration on every port and socket
of the serving processes, with and without the keys it read; shared memory asked for through the public
fronts; tritonclient's own options passing them; 64 clients trickling their requests while a new one must
be answered within 5 s. Skipped like test_live.py where tritonserver cannot run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engines.serving import sandbox
from engines.serving.sockets import SocketFolder, UnixHTTPConnection
from tests.engines.serving import local_attacker
from tests.engines.serving.live_server import SKIP, live_marks

pytestmark = [*live_marks(), pytest.mark.skipif(not Path("/proc/self/net").exists(), reason="reads Linux /proc")]
if SKIP is None:
    from engines.client import TritonEncoderClient

NOBODY = 65534
TRICKLERS = 64
ANSWER_WITHIN_S = 5.0


def socket_inodes(pids) -> set[int]:
    found = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                found.add(int(target[8:-1]))
    return found


def listening_tcp(net: Path) -> dict[int, int]:
    """{inode: port} of the TCP sockets listening in that network namespace (its /proc/<pid>/net)."""
    out = {}
    for name in ("tcp", "tcp6"):
        for line in (net / name).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A":  # LISTEN
                out[int(f[9])] = int(f[1].rsplit(":", 1)[1], 16)
    return out


def listening_unix(net: Path) -> dict[int, str]:
    out = {}
    for line in (net / "unix").read_text().splitlines()[1:]:
        f = line.split()
        if len(f) >= 8 and int(f[3], 16) & 0x10000:  # __SO_ACCEPTCON: listening
            out[int(f[6])] = f[7]
    return out


def mapped_regions(pids) -> list[str]:
    names = set()
    for pid in pids:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            path = line.split()[-1]
            if path.startswith("/dev/shm/triton_python_backend_shm_region_"):
                names.add(path.rsplit("/", 1)[1])
    return sorted(names)


def attack(targets: dict) -> tuple[str, list[dict]]:
    """Run the attacker as user nobody where the tests can switch users (root), else as this user."""
    python, ids = sys.executable, {}
    if os.geteuid() == 0 and local_attacker.python_for(NOBODY):
        python, ids = local_attacker.python_for(NOBODY), {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    source = Path(local_attacker.__file__).read_text()
    done = subprocess.run(
        [python, "-I", "-S", "-c", source, json.dumps(targets)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
        **ids,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return ("nobody" if ids else "this user"), [json.loads(line) for line in done.stdout.splitlines()]


def _isolated() -> None:
    from engines.serving.tritonserver import isolation_refused

    refused = isolation_refused()
    if refused is not None:
        pytest.skip(f"this host cannot isolate tritonserver ({refused}): engines.serving refuses to serve here")


def test_a_local_user_reaches_no_api_and_reads_no_tensor(server):
    """Issue 27's attack. On the server before the fix tritonserver's HTTP port on 127.0.0.1 answered the
    registration 200 and the backend's region in /dev/shm was 0644: both breaches. Now tritonserver has no
    TCP port (in the host's network or its own), its sockets are in a 0700 folder, its regions in a /dev/shm
    of its own; the keys on its command line (which the attacker does read) open nothing it can reach."""
    _isolated()
    urls, _ = server
    triton = urls["server"]
    serving = [os.getpid(), triton.proc.pid, *triton.stubs]
    ours = socket_inodes(serving)
    theirs = socket_inodes([triton.proc.pid, *triton.stubs])
    host_tcp = listening_tcp(Path("/proc/self/net"))
    own_tcp = listening_tcp(Path(f"/proc/{triton.proc.pid}/net"))
    unix = {i: p for i, p in listening_unix(Path(f"/proc/{triton.proc.pid}/net")).items() if i in theirs}
    targets = {
        "ports": sorted({port for inode, port in host_tcp.items() if inode in ours} | set(own_tcp.values())),
        "unix": sorted(unix.values()) if os.geteuid() == 0 else [],  # this very user may open its own folder
        "regions": mapped_regions([triton.proc.pid, *triton.stubs]),
    }
    who, tries = attack(targets)
    breaches = [t for t in tries if t["outcome"] in ("200", "read")]
    assert breaches == [], (who, breaches)
    assert [inode for inode in host_tcp if inode in theirs] == [] and own_tcp == {}, "tritonserver listens on TCP"
    # the attack was real: it saw the fronts, the sockets, the regions and the key on the command line
    front_ports = {int(urls["http"].rsplit(":", 1)[1]), int(urls["grpc"].rsplit(":", 1)[1])}
    assert front_ports <= set(targets["ports"]) and targets["regions"], targets
    assert {t["key"] for t in tries} >= {None, "x-rt-key"}, tries
    folder = Path(urls["sockets"])
    assert folder.stat().st_uid == os.geteuid() and stat.S_IMODE(folder.stat().st_mode) == 0o700
    if targets["unix"]:
        assert {t["outcome"] for t in tries if t["target"] in targets["unix"]} == {"PermissionError"}, tries


def test_the_owner_reaches_the_socket_and_only_the_key_opens_registration(server):
    """The positive control of the attack above (run as the serving user, who may open the folder): the
    registration through tritonserver's own socket is 403 without the key and 200 with it, so the attacker
    would have seen a reachable API. The region is unregistered again."""
    urls, _ = server
    triton = urls["server"]
    key = next(value for header, value in local_attacker.keys_on_command_lines() if header == "x-rt-key")
    region = mapped_regions([triton.proc.pid, *triton.stubs])[0]
    http_socket = str(Path(urls["sockets"]) / "http.sock")
    assert local_attacker.register(local_attacker.UnixConnection(http_socket), region, None) == "403"
    try:
        assert local_attacker.register(local_attacker.UnixConnection(http_socket), region, ("x-rt-key", key)) == "200"
    finally:
        conn = local_attacker.UnixConnection(http_socket)
        conn.request("POST", "/v2/systemsharedmemory/region/steal/unregister", body=b"{}", headers={"x-rt-key": key})
        assert conn.getresponse().status == 200
        conn.close()


def _feeds():
    ids = np.full((1, 5), 7, np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_shared_memory_through_the_public_front_is_refused(server, protocol):
    """With a region registered, the HTTP front forwarded outputs[0].parameters.shared_memory_region and
    tritonserver died 1.7 s later (engines.serving exit 5). Now: refused on outputs, inputs and the request."""
    import tritonclient.grpc as tg
    import tritonclient.http as th
    from tritonclient.utils import InferenceServerException

    urls, _ = server
    tc = th if protocol == "http" else tg
    client = tc.InferenceServerClient(urls[protocol])
    try:
        ins = []
        for name, a in _feeds().items():
            i = tc.InferInput(name, list(a.shape), "INT64")
            i.set_data_from_numpy(a)
            ins.append(i)
        out = tc.InferRequestedOutput("sentence_embedding")
        out.set_shared_memory("steal", 128)
        with pytest.raises(InferenceServerException, match="output 'sentence_embedding': shared memory is not offered"):
            client.infer(urls["model"], ins, outputs=[out])
        with pytest.raises(InferenceServerException, match="the request: parameter 'my_parameter' is not taken"):
            client.infer(urls["model"], ins, parameters={"my_parameter": 1})
        ins[0].set_shared_memory("steal", 40, offset=4096)
        with pytest.raises(InferenceServerException, match="input 'input_ids': shared memory is not offered"):
            client.infer(urls["model"], ins)
    finally:
        client.close()
    assert urls["server"].death() is None


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tritonclients_options_pass_the_front(server, protocol):
    """What tritonclient sends for priority, timeout, sequence ids, JSON outputs and a classification
    output is taken by the front and answered by tritonserver."""
    import tritonclient.grpc as tg
    import tritonclient.http as th

    urls, _ = server
    tc = th if protocol == "http" else tg
    client = tc.InferenceServerClient(urls[protocol])
    try:
        ins = []
        for name, a in _feeds().items():
            i = tc.InferInput(name, list(a.shape), "INT64")
            i.set_data_from_numpy(a)
            ins.append(i)
        outs = [
            tc.InferRequestedOutput("sentence_embedding"),
            tc.InferRequestedOutput("last_hidden_state", class_count=2),
        ]
        if protocol == "http":
            outs[0] = th.InferRequestedOutput("sentence_embedding", binary_data=False)
        r = client.infer(urls["model"], ins, outputs=outs, priority=1, timeout=60_000_000, sequence_id=9)
        assert r.as_numpy("sentence_embedding").shape == (1, 32)
        assert r.as_numpy("last_hidden_state").shape == (1, 2)  # the top 2 "value:index" of the whole output
    finally:
        client.close()


def _trickle(host: str, port: int, stop: threading.Event, opened: threading.Semaphore) -> None:
    with socket.create_connection((host, port), timeout=60) as s:
        s.sendall(b"POST /v2/models/x/infer HTTP/1.1\r\n")
        opened.release()
        while not stop.wait(1.0):
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                return


def test_64_trickling_clients_do_not_lock_out_a_new_one(server):
    """64 connections sending one header line a second (the finding: one every 20 s, never dropped, and a
    health request unanswered in 150 s). A health request and an inference must each be answered within 5 s."""
    urls, _ = server
    host, port = urls["http"].rsplit(":", 1)
    stop, opened = threading.Event(), threading.Semaphore(0)
    tricklers = [threading.Thread(target=_trickle, args=(host, int(port), stop, opened)) for _ in range(TRICKLERS)]
    for t in tricklers:
        t.start()
    try:
        for _ in tricklers:
            assert opened.acquire(timeout=30)
        time.sleep(1.5)  # every trickler has sent a header line since
        start = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=ANSWER_WITHIN_S) as s:
            s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1.1 200")
        health_s = time.monotonic() - start
        start = time.monotonic()
        with TritonEncoderClient(urls["http"], urls["model"], "http") as c:
            assert c.infer(_feeds())["sentence_embedding"].shape == (1, 32)
        infer_s = time.monotonic() - start
    finally:
        stop.set()
        for t in tricklers:
            t.join()
    print(f"with {TRICKLERS} trickling clients: health answered in {health_s:.2f} s, an inference in {infer_s:.2f} s")
    assert health_s < ANSWER_WITHIN_S and infer_s < ANSWER_WITHIN_S, (health_s, infer_s)


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming an unprivileged user takes root")
def test_tritonserver_runs_isolated_as_an_unprivileged_user(tmp_path_factory):
    """The path of every non-root user, with the real binary: sandbox.py (an unprivileged user namespace
    first) execs tritonserver, which serves on its Unix sockets from a network of its own. An empty model
    repository: the Python backend stub needs an interpreter nobody may run here, the launcher's own test
    (test_sandbox.py) covers /dev/shm for that user."""
    from engines.serving.tritonserver import find_tritonserver, server_env

    python = local_attacker.python_for(NOBODY)
    if python is None:
        pytest.skip("no Python interpreter that user nobody can run")
    work = Path(tempfile.mkdtemp(prefix="roformer-nobody-"))  # /tmp: nobody may not enter pytest's folders
    try:
        os.chown(work, NOBODY, NOBODY)
        for sub in ("repository", "sockets"):
            (work / sub).mkdir(mode=0o700)
            os.chown(work / sub, NOBODY, NOBODY)
        sockets, dist = SocketFolder(work / "sockets"), find_tritonserver()
        launcher = [python, "-I", "-S", "-c", Path(sandbox.__file__).read_text(), "--parent", str(os.getpid()), "--"]
        cmd = [*launcher, str(dist.binary), "--model-repository", str(work / "repository"), *sockets.triton_args()]
        ids = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
        proc = subprocess.Popen(
            cmd, env=server_env(dist), cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **ids
        )
        try:
            deadline, status = time.monotonic() + 60, None
            while status is None and time.monotonic() < deadline and proc.poll() is None:
                conn = UnixHTTPConnection(sockets.http, timeout=5)
                try:
                    conn.request("GET", "/v2/health/live")
                    status = conn.getresponse().status
                except OSError:
                    time.sleep(0.3)
                finally:
                    conn.close()
            assert status == 200, proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no answer"
            assert os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")
            assert Path(f"/proc/{proc.pid}/uid_map").read_text().split() == [str(NOBODY), str(NOBODY), "1"]
            assert listening_tcp(Path(f"/proc/{proc.pid}/net")) == {}
        finally:
            proc.kill()
            proc.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)
