"""Slow and idle clients at the HTTP front (a stand-in tritonserver on Unix sockets, short deadlines so the
test takes seconds): a request that trickles in steadily is cut at its whole-request deadline, not kept
alive by each byte; when every connection thread is taken by such clients, a new client is still answered
at once (the connection waiting longest for its request makes room); an idle keep-alive connection is
closed at the deadline. The live server with 64 trickling clients: test_live.py."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.engines.serving.stand_in import CAP, MODEL, send, serving_front

DEADLINE_S = 2.0
THREADS = 8


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    with serving_front(
        tmp_path_factory.mktemp("sockets"), max_connections=THREADS, request_deadline_s=DEADLINE_S
    ) as port:
        yield port


def trickle(port: int, stop: threading.Event, every_s: float, closed_after: list) -> None:
    """One header line every `every_s` until the front closes the connection (its time then recorded)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(b"POST " + MODEL.encode() + b" HTTP/1.1\r\n")
            while not stop.is_set():
                s.sendall(b"X-Slow: 1\r\n")
                s.settimeout(every_s)
                try:
                    if s.recv(1024) == b"":  # closed by the front
                        break
                except TimeoutError:
                    continue
        except OSError:  # reset by the front
            pass
    closed_after.append(time.monotonic() - start)


def test_a_trickling_request_is_cut_at_its_deadline(front):
    """A header line every 0.2 s keeps a per-read timeout (60 s before) from ever firing; the whole-request
    deadline closes the connection at DEADLINE_S all the same."""
    stop, closed = threading.Event(), []
    t = threading.Thread(target=trickle, args=(front, stop, 0.2, closed))
    t.start()
    t.join(timeout=DEADLINE_S + 5)
    stop.set()
    t.join()
    assert closed and DEADLINE_S - 0.3 <= closed[0] <= DEADLINE_S + 2, closed


def test_a_body_sent_too_slowly_gets_408(front):
    """A byte of the body every 0.2 s until just before the deadline, then nothing more: the front answers
    408 at the deadline (the bytes stop early so the front's close is clean, not a reset that loses it)."""
    body = b'{"inputs": []}' + b" " * 50
    with socket.create_connection(("127.0.0.1", front), timeout=30) as s:
        start = time.monotonic()
        s.sendall(b"POST %s HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MODEL.encode(), len(body)))
        for i in range(int((DEADLINE_S - 0.5) / 0.2)):
            s.sendall(body[i : i + 1])
            time.sleep(0.2)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408") and b"was not whole within" in answer, answer[:200]
    assert DEADLINE_S - 0.3 <= elapsed <= DEADLINE_S + 2, elapsed


def test_a_new_client_is_answered_while_every_thread_is_taken(front):
    stop, closed = threading.Event(), []
    tricklers = [threading.Thread(target=trickle, args=(front, stop, 0.1, closed)) for _ in range(THREADS)]
    for t in tricklers:
        t.start()
    time.sleep(0.5)  # every thread now waits on a trickling request
    try:
        start = time.monotonic()
        code, _, _ = send(front, "GET", "/v2/health/ready")
        elapsed = time.monotonic() - start
    finally:
        stop.set()
        for t in tricklers:
            t.join()
    assert code == 200 and elapsed < DEADLINE_S - 0.5 - 0.5, (code, elapsed)  # before any trickler's deadline
    assert min(closed) < DEADLINE_S  # the one that made room was closed before its own deadline


def test_an_idle_connection_is_closed_at_the_deadline(front):
    with socket.create_connection(("127.0.0.1", front), timeout=30) as s:
        s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        data = b""
        while chunk := s.recv(65536):  # the answer, then nothing until the front closes it
            data += chunk
        elapsed = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 200") and DEADLINE_S - 0.3 <= elapsed <= DEADLINE_S + 2, (data[:40], elapsed)


def test_a_silent_or_idle_grpc_connection_is_closed():
    pytest.importorskip("grpc", reason="grpcio (dev extra) not installed")
    from engines.serving.grpc_front import start_grpc_front

    server, channel, port = start_grpc_front("127.0.0.1:0", "unix:/nonexistent", CAP, "k", idle_s=DEADLINE_S)
    try:
        for first_bytes in (b"", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(first_bytes)  # nothing, or the HTTP/2 preface and an empty SETTINGS frame, then silence
                start = time.monotonic()
                while s.recv(65536):
                    pass
                elapsed = time.monotonic() - start
            assert DEADLINE_S - 0.3 <= elapsed <= DEADLINE_S + 3, (first_bytes[:3], elapsed)
    finally:
        server.stop(grace=None)
        channel.close()
