"""The public HTTP port of engines.serving: a small KServe v2 front before tritonserver's Unix socket.

In:  the public host:port, tritonserver's SocketFolder, the served model's RequestCap, the restriction key.
Out: a ThreadingHTTPServer (stdlib) that answers, one line each, as JSON {"error": ...} (what tritonclient
     reads): 411 a body without Content-Length, 413 a body over the cap (refused from Content-Length, before
     it is read), 400 a length header that is not ASCII digits, a compressed body, or an inference body
     http_judge refuses (declarations, parameters, shared memory), 404 an endpoint not offered here, 408 a
     request not whole within its deadline. Everything else is forwarded to tritonserver and its answer
     (status, headers, body) relayed: health, metadata, config, statistics, repository index, inference,
     and GET /metrics (tritonserver's Prometheus text), so tritonclient works through the front unchanged.
Slow and idle clients: each request must arrive whole (request line, headers and body) within
REQUEST_DEADLINE_S of the moment the front starts waiting for it (the accept, or the end of the previous
answer), however steadily it trickles; each connection has a thread of its own (MAX_CONNECTIONS at once),
and when all are taken, the connection that has waited longest for its request is closed to make room, so
a new client is served at once while slow ones hold threads (health and inference alike).
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import math
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from engines.serving.http_judge import HEADER_LENGTH, Refusal, judge_infer
from engines.serving.request_limits import RequestCap
from engines.serving.sockets import SocketFolder, UnixHTTPConnection
from engines.serving.tritonserver import RESTRICTION_HEADER

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 256  # connection threads at once; at the limit the longest-waiting reader is closed
REQUEST_DEADLINE_S = 30.0  # a whole request (line, headers, body), from when the front starts waiting for it
SEND_TIMEOUT_S = 30.0  # a client that does not read its answer
DRAIN_LIMIT = 256 * 1024 * 1024  # an oversize body up to this is read and dropped, so the client sees the 413
UPSTREAM_TIMEOUT_S = 600.0  # a request tritonserver queues behind others may take this long
LENGTH = re.compile(r"[0-9]{1,18}")  # ASCII digits only ("²" passes str.isdigit), bounded before int()
_MODEL = r"/v2/models/[A-Za-z0-9_.-]+(?:/versions/[0-9]+)?"
OFFERED = {  # method -> endpoints forwarded to tritonserver; the rest (shared memory, logging, trace, load) is not
    "GET": re.compile(rf"/v2|/v2/health/(?:live|ready)|/v2/models/stats|{_MODEL}(?:/ready|/config|/stats)?|/metrics"),
    "HEAD": re.compile(r"/v2/health/(?:live|ready)"),
    "POST": re.compile(rf"{_MODEL}/infer|/v2/repository/index"),
}
KEYED = ("POST", "/v2/repository/index")  # the one offered endpoint behind tritonserver's restriction key
RELAYED = ("Content-Type", HEADER_LENGTH, "Content-Encoding")


def header_length(value: str | None, name: str) -> int | None:
    """A length header's value as an int (None when absent); Refusal(400) unless it is 1-18 ASCII digits."""
    if value is None:
        return None
    digits = value.strip(" \t")  # HTTP's own whitespace; str.strip() would take Unicode spaces too
    if not LENGTH.fullmatch(digits):
        raise Refusal(400, f"{name} {value[:20]!r} is not a length in ASCII digits")
    return int(digits)


class DeadlineReader(io.RawIOBase):
    """A connection's bytes; every read waits at most for what is left before `deadline` (monotonic)."""

    def __init__(self, sock: socket.socket):
        self.sock, self.deadline = sock, math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's deadline passed")
        self.sock.settimeout(min(left, UPSTREAM_TIMEOUT_S))
        return self.sock.recv_into(buffer)


class FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as tritonclient expects
    disable_nagle_algorithm = True  # headers and body go out in two writes: without this, +40 ms (delayed ACK)
    server: HttpFront

    def setup(self):
        super().setup()
        self.rfile.close()  # the plain socket file, replaced by one that keeps the deadline
        self.reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self):
        self.reader.deadline = time.monotonic() + self.server.request_deadline_s
        self.server.waiting(self, True)
        try:
            super().handle_one_request()  # a deadline passed in the request line or headers: closed, no answer
        finally:
            self.server.waiting(self, False)

    def log_message(self, fmt, *args):  # access log at debug level, not on stderr
        log.debug("%s " + fmt, self.address_string(), *args)

    def do_GET(self):
        self._serve(read_body=False)

    def do_HEAD(self):
        self._serve(read_body=False)

    def do_POST(self):
        self._serve(read_body=True)

    def do_PUT(self):
        self._unread = -1  # its body is not read: the connection closes after the answer
        self._refuse(Refusal(404, f"{self.command} {self.path[:80]} is not offered on this port"))

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    def _serve(self, read_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        has_body = "Transfer-Encoding" in self.headers or self.headers.get("Content-Length", "0").strip() != "0"
        self._unread = -1 if has_body else 0  # body bytes still in the socket (-1: unknown) when refused
        try:
            if not OFFERED.get(self.command, re.compile("$^")).fullmatch(path):
                raise Refusal(
                    404,
                    f"{self.command} {path[:80]} is not offered on this port "
                    "(health, metadata, config, statistics, metrics and infer are)",
                )
            body = self._read_body() if read_body else b""
            self._answering()
            if path.endswith("/infer"):
                length = header_length(self.headers.get(HEADER_LENGTH), HEADER_LENGTH)
                if length is not None and length > len(body):
                    raise Refusal(400, f"{HEADER_LENGTH} {length} is not a length within the body")
                judge_infer(body, length, self.server.cap)
        except Refusal as r:
            self._refuse(r)
            return
        if not read_body and has_body:
            self.close_connection = True  # a body on GET/HEAD is not read: the connection cannot go on
        self._forward(path, body if read_body else None)

    def _answering(self) -> None:
        """The request is whole: no deadline on it any more, a bound on sending its answer."""
        self.server.waiting(self, False)
        self.reader.deadline = math.inf
        self.connection.settimeout(SEND_TIMEOUT_S)

    def _read_body(self) -> bytes:
        self._unread = -1  # unknown until Content-Length is read: a refusal closes the connection
        if self.headers.get("Transfer-Encoding", "identity").lower() != "identity":
            raise Refusal(411, "send the body with a Content-Length (chunked bodies are not taken)")
        length = header_length(self.headers.get("Content-Length"), "Content-Length")
        if length is None:
            raise Refusal(411, "send the body with a Content-Length")
        self._unread = length
        cap = self.server.cap
        if length > cap.max_body_bytes:
            raise Refusal(
                413,
                f"request body of {length} bytes exceeds the model's limit of {cap.max_body_bytes} bytes "
                f"(--max-batch {cap.max_batch} x {cap.positions} positions); send at most {cap.positions} "
                "tokens per sequence",
            )
        if self.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise Refusal(400, "compressed request bodies are not taken; send it uncompressed")
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self._unread = -1  # nothing more is read from this client
            raise Refusal(
                408, f"the request was not whole within {self.server.request_deadline_s:.0f} s; send it at once"
            ) from None
        self._unread = length - len(body)
        if len(body) != length:  # the client closed or stopped sending: answered, then the connection closed
            raise Refusal(400, f"the body ended after {len(body)} of {length} bytes")
        return body

    def _refuse(self, r: Refusal) -> None:
        try:
            if 0 < self._unread <= DRAIN_LIMIT:  # read and drop it, in bounded chunks, within the deadline
                while self._unread > 0:
                    chunk = self.rfile.read(min(self._unread, 1 << 20))
                    if not chunk:
                        break
                    self._unread -= len(chunk)
        except TimeoutError:
            pass  # the deadline passed while dropping it: answered all the same, then closed
        self._answering()
        data = json.dumps({"error": str(r)}).encode()
        self.send_response(r.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self._unread:  # a body still unread makes the connection unusable
            self.send_header("Connection", "close")
            self.close_connection = True
        try:
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client went away before its answer: nothing left to tell it
            self.close_connection = True

    def _forward(self, path: str, body: bytes | None) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", HEADER_LENGTH.lower())}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        if (self.command, path) == KEYED:
            headers[RESTRICTION_HEADER] = self.server.key
        try:
            status, reply_headers, data = self.server.upstream(self.command, self.path, body, headers)
        except OSError as e:
            self._refuse(
                Refusal(
                    503,
                    f"the inference server does not answer ({type(e).__name__}); "
                    "engines.serving exits and should be restarted",
                )
            )
            return
        self.send_response(status)
        for k, v in reply_headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class HttpFront(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        sockets: SocketFolder,
        cap: RequestCap,
        key: str,
        max_connections: int = MAX_CONNECTIONS,
        request_deadline_s: float = REQUEST_DEADLINE_S,
    ):
        super().__init__(address, FrontHandler)
        self.cap, self.sockets, self.key = cap, sockets, key
        self.request_deadline_s = request_deadline_s
        self._slots = threading.BoundedSemaphore(max_connections)
        self._waiting: dict[FrontHandler, float] = {}  # connections waiting for a request -> since when
        self._lock = threading.Lock()
        self._local = threading.local()  # each connection thread's upstream connections
        self._thread: threading.Thread | None = None

    def handle_error(self, request, client_address):
        """A client that vanished or stalled ends its own connection: one debug line, no traceback on
        stderr; anything else is a bug of the front, logged with its traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("connection from %s ended: %s", client_address, exc)
        else:
            log.exception("http front: unexpected error serving %s", client_address)

    def waiting(self, handler: FrontHandler, now: bool) -> None:
        with self._lock:
            if now:
                self._waiting[handler] = time.monotonic()
            else:
                self._waiting.pop(handler, None)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self._close_longest_waiting()
            self._slots.acquire()  # every thread is answering a whole request: wait for one to finish
        super().process_request(request, client_address)

    def _close_longest_waiting(self) -> None:
        with self._lock:
            if not self._waiting:
                return
            oldest = min(self._waiting, key=self._waiting.__getitem__)
            del self._waiting[oldest]
            try:
                oldest.connection.shutdown(socket.SHUT_RDWR)  # its read returns at once; its thread ends
            except OSError:
                pass
        log.debug("every connection thread taken: closed the connection waiting longest for its request")

    def upstream(self, method: str, path: str, body: bytes | None, headers: dict):
        """(status, relayed headers, body) of the same request sent to tritonserver's socket (GET /metrics:
        its metrics socket), on a kept-alive connection of this thread's."""
        metrics = path.split("?", 1)[0] == "/metrics"
        for attempt in (0, 1):  # a kept-alive connection that tritonserver closed meanwhile is opened once more
            conn = self._connection(metrics)
            try:
                conn.request(method, path, body=body, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._drop(metrics)
                if attempt:
                    raise
                continue
            except OSError:
                self._drop(metrics)
                raise
            relayed = [(k, v) for k, v in reply.getheaders() if k in RELAYED or k.title() in RELAYED]
            return reply.status, relayed, data
        raise AssertionError("unreachable")

    def _connection(self, metrics: bool) -> UnixHTTPConnection:
        conns = self._local.__dict__.setdefault("conns", {})
        if metrics not in conns:
            where = self.sockets.metrics if metrics else self.sockets.http
            conns[metrics] = UnixHTTPConnection(where, timeout=UPSTREAM_TIMEOUT_S)
        return conns[metrics]

    def _drop(self, metrics: bool) -> None:
        conn = self._local.__dict__.get("conns", {}).pop(metrics, None)
        if conn is not None:
            conn.close()

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._drop(False)
            self._drop(True)
            self._slots.release()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="http-front", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()  # returns once serve_forever has left its loop
        self.server_close()
