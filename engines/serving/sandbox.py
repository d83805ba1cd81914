"""Start tritonserver where no other local user can reach it: its own network and mount namespaces (Linux).

    python -I -S sandbox.py --parent PID -- /path/tritonserver ARGS...   (execs tritonserver inside)
    python -I -S sandbox.py --probe                                     (exit 0, or 3 and the reason)
    python -I -S sandbox.py --no-namespaces --parent PID -- ...         (--trust-local-users: no isolation)

In the new namespaces tritonserver and its Python backend stub see a network with no interface up (no TCP
port of theirs exists on the host, whatever they bind) and a /dev/shm of their own (a fresh tmpfs, mode
0700): the backend's shared-memory regions, created 0644 by tritonserver 2.51 (boost's permissions, umask
ignored; measured), are not in the host's /dev/shm, so no other user can read a request's tensors there.
The Unix sockets tritonserver listens on (engines.serving.tritonserver) are files: reachable across the
network namespace by whoever can open their folder, which is ours, 0700.
As root: unshare(CLONE_NEWNET | CLONE_NEWNS). Otherwise an unprivileged user namespace first
(CLONE_NEWUSER, our uid and gid mapped to themselves, setgroups denied), where the host allows them.
Runs as a script of its own (stdlib only, `-I -S`): a fresh single-threaded process, never Python code in a
forked copy of the threaded serving process. Exit 3 with one line on stderr when a step is refused.
"""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x4000, 0x40000
PR_SET_PDEATHSIG = 1
SHM = "/dev/shm"
EXIT_UNAVAILABLE = 3  # export.errors.EXIT_UNAVAILABLE; not imported: this script runs isolated (-I)


class Refused(Exception):
    pass


def _call(result: int, what: str) -> None:
    if result != 0:
        raise Refused(f"{what}: {os.strerror(ctypes.get_errno())}")


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise Refused(f"writing {path}: {e.strerror}") from None


def enter() -> None:
    """Move this process into new network and mount namespaces with a private /dev/shm, or raise Refused."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.geteuid(), os.getegid()
    flags = CLONE_NEWNET | CLONE_NEWNS | (0 if uid == 0 else CLONE_NEWUSER)
    _call(libc.unshare(flags), "unshare(network, mount" + ("" if uid == 0 else ", user") + " namespaces)")
    if uid != 0:  # inside, the same ids: files tritonserver creates stay ours
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _call(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making the mounts private")
    if not os.path.isdir(SHM) or os.path.islink(SHM):
        raise Refused(f"{SHM} is not a folder")
    _call(
        libc.mount(b"tmpfs", SHM.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0700"), f"mounting a tmpfs on {SHM}"
    )


def _die_with(parent: int) -> None:
    """SIGKILL when the serving process dies, however it dies (kept across exec)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, 9)
    if os.getppid() != parent:  # it died before the line above
        sys.exit(EXIT_UNAVAILABLE)


def main(argv: list[str]) -> int:
    isolate = argv[:1] != ["--no-namespaces"]
    argv = argv if isolate else argv[1:]
    try:
        if argv[:1] == ["--probe"]:
            enter()
            return 0
        if len(argv) < 4 or argv[0] != "--parent" or not argv[1].isascii() or not argv[1].isdigit() or argv[2] != "--":
            print("usage: sandbox.py --probe | [--no-namespaces] --parent PID -- PROGRAM ARGS...", file=sys.stderr)
            return 2
        if isolate:
            enter()
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    _die_with(int(argv[1]))
    os.execv(argv[3], argv[3:])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
