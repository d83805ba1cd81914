"""The public HTTP port of engines.serving: a small KServe v2 front before tritonserver on loopback.

In:  the public host:port, tritonserver's loopback HTTP address, the served model's RequestCap.
Out: a ThreadingHTTPServer (stdlib) that answers, one line each, as JSON {"error": ...} (what tritonclient
     reads): 411 a body without Content-Length, 413 a body over the cap (refused from Content-Length, before
     it is read), 400 a compressed body, invalid JSON, an input whose declared shape is negative, over the
     cap or does not match its data (JSON elements, or binary_data_size and the binary section), shared
     memory, 404 an endpoint that is not offered here. Everything else is forwarded to tritonserver and its
     answer (status, headers, body) relayed: health, metadata, config, statistics and inference, so
     tritonclient's HTTP client works through the front unchanged.
Why: see engines.serving.request_limits (one hostile request aborts tritonserver 2.51).
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from engines.serving.request_limits import RequestCap, input_problem

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"  # KServe binary tensor extension
MAX_CONNECTIONS = 64  # connections served at once; more wait in the listen backlog
DRAIN_LIMIT = 256 * 1024 * 1024  # an oversize body up to this is read and dropped, so the client sees the 413
SOCKET_TIMEOUT_S = 60.0  # a client that stops sending mid-request is dropped after this
UPSTREAM_TIMEOUT_S = 600.0  # a request tritonserver queues behind others may take this long
_MODEL = r"/v2/models/[A-Za-z0-9_.-]+(?:/versions/[0-9]+)?"
OFFERED = {  # method -> endpoints forwarded to tritonserver; the rest (shared memory, logging, trace, load) is not
    "GET": re.compile(rf"/v2|/v2/health/(?:live|ready)|/v2/models/stats|{_MODEL}(?:/ready|/config|/stats)?"),
    "HEAD": re.compile(r"/v2/health/(?:live|ready)"),
    "POST": re.compile(rf"{_MODEL}/infer|/v2/repository/index"),
}
RELAYED = ("Content-Type", HEADER_LENGTH, "Content-Encoding")


class Refusal(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


INT_RANGE = {"INT8": 8, "INT16": 16, "INT32": 32, "INT64": 64, "UINT8": -8, "UINT16": -16, "UINT32": -32, "UINT64": -64}


def data_problem(name, data, shape, datatype) -> str | None:
    """Why a KServe JSON `data` value does not hold `shape` of `datatype`, else None. Taken: a flat list of
    prod(shape) values, or lists nested exactly as `shape` (tritonserver answers 500 to anything else)."""
    if not isinstance(data, list):
        return f"input {name!r}: 'data' must be a list"
    level, dims = [data], []
    while level and all(isinstance(x, list) for x in level):
        lengths = {len(x) for x in level}
        if len(lengths) != 1:
            return f"input {name!r}: 'data' is a ragged nested list; send a flat list or lists nested as the shape"
        dims.append(lengths.pop())
        level = [y for x in level for y in x]
    if any(isinstance(x, list) for x in level):
        return f"input {name!r}: 'data' mixes lists and values; send a flat list or lists nested as the shape"
    n = 1
    for d in shape:
        n *= d
    if dims != [n] and dims != list(shape):
        return (
            f"input {name!r}: shape {list(shape)} declares {n} elements but 'data' holds {len(level)} "
            f"(nested as {dims}); send matching data"
        )
    return _values_problem(name, level, datatype)


def _values_problem(name, values, datatype) -> str | None:
    bits = INT_RANGE.get(datatype)
    if bits is not None:
        lo, hi = (0, 2**-bits - 1) if bits < 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        if not all(type(v) is int and lo <= v <= hi for v in values):
            return f"input {name!r}: every value of a {datatype} input must be an integer in [{lo}, {hi}]"
    elif datatype == "BOOL":
        if not all(type(v) is bool for v in values):
            return f"input {name!r}: every value of a BOOL input must be true or false"
    elif not all(type(v) in (int, float) for v in values):
        return f"input {name!r}: every value of a {datatype} input must be a number"
    return None


def judge_infer(body: bytes, header_length: int | None, cap: RequestCap) -> None:
    """Raise Refusal(400) when any input of this inference body cannot be served as declared."""
    head = body if header_length is None else body[:header_length]
    try:
        request = json.loads(head)
    except (ValueError, RecursionError) as e:
        raise Refusal(
            400, f"request body is not valid JSON ({str(e).splitlines()[0][:80]}); send a KServe v2 inference request"
        ) from None
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise Refusal(400, "request has no 'inputs' list; send a KServe v2 inference request")
    binary_total = 0
    for item in inputs:
        if not isinstance(item, dict):
            raise Refusal(400, "every entry of 'inputs' must be an object with name, shape, datatype and data")
        name, params = item.get("name"), item.get("parameters") or {}
        if not isinstance(params, dict) or "shared_memory_region" in params:
            raise Refusal(
                400, f"input {name!r}: shared memory is not offered on this port; send the data in the request"
            )
        size = params.get("binary_data_size")
        if size is not None:
            if header_length is None or type(size) is not int or size < 0:
                raise Refusal(
                    400, f"input {name!r}: binary_data_size needs a non-negative integer and the {HEADER_LENGTH} header"
                )
            problem = input_problem(name, item.get("shape"), item.get("datatype"), nbytes=size, cap=cap)
            binary_total += size
        elif "data" in item:
            problem = input_problem(name, item.get("shape"), item.get("datatype"), cap=cap)
            problem = problem or data_problem(name, item["data"], item["shape"], item["datatype"])
        else:
            problem = f"input {name!r} has neither 'data' nor a binary_data_size parameter"
        if problem:
            raise Refusal(400, problem)
    if header_length is not None and binary_total != len(body) - header_length:
        raise Refusal(
            400,
            f"the binary section holds {len(body) - header_length} bytes but the inputs declare "
            f"{binary_total}; send matching data",
        )


class FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as tritonclient expects
    disable_nagle_algorithm = True  # headers and body go out in two writes: without this, +40 ms (delayed ACK)
    timeout = SOCKET_TIMEOUT_S
    server: HttpFront

    def log_message(self, fmt, *args):  # access log at debug level, not on stderr
        log.debug("%s " + fmt, self.address_string(), *args)

    def do_GET(self):
        self._serve(read_body=False)

    def do_HEAD(self):
        self._serve(read_body=False)

    def do_POST(self):
        self._serve(read_body=True)

    def do_PUT(self):
        self._unread = 0
        self._refuse(Refusal(404, f"{self.command} {self.path[:80]} is not offered on this port"))

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    def _serve(self, read_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        self._unread = 0  # body bytes still in the socket when a refusal is sent
        try:
            if not OFFERED.get(self.command, re.compile("$^")).fullmatch(path):
                raise Refusal(
                    404,
                    f"{self.command} {path[:80]} is not offered on this port "
                    "(health, metadata, config, statistics and infer are)",
                )
            body = self._read_body() if read_body else b""
            if path.endswith("/infer"):
                judge_infer(body, self._header_length(), self.server.cap)
        except Refusal as r:
            self._refuse(r)
            return
        if not read_body and self.headers.get("Content-Length", "0").strip() not in ("", "0"):
            self.close_connection = True  # a body on GET/HEAD is not read: the connection cannot go on
        self._forward(body if read_body else None)

    def _read_body(self) -> bytes:
        self._unread = -1  # unknown until Content-Length is read: a refusal closes the connection
        if self.headers.get("Transfer-Encoding", "identity").lower() != "identity":
            raise Refusal(411, "send the body with a Content-Length (chunked bodies are not taken)")
        raw = self.headers.get("Content-Length")
        if raw is None or not raw.strip().isdigit():
            raise Refusal(411, "send the body with a Content-Length")
        length = self._unread = int(raw)
        if length > self.server.cap.max_body_bytes:
            raise Refusal(
                413,
                f"request body of {length} bytes exceeds the model's limit of "
                f"{self.server.cap.max_body_bytes} bytes (--max-batch {self.server.cap.max_batch} x "
                f"{self.server.cap.positions} positions); send at most {self.server.cap.positions} "
                "tokens per sequence",
            )
        if self.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise Refusal(400, "compressed request bodies are not taken; send it uncompressed")
        body = self.rfile.read(length)
        self._unread = length - len(body)
        if len(body) != length:  # the client closed or stopped sending: answered, then the connection closed
            raise Refusal(400, f"the body ended after {len(body)} of {length} bytes")
        return body

    def _header_length(self) -> int | None:
        raw = self.headers.get(HEADER_LENGTH)
        if raw is None:
            return None
        if not raw.strip().isdigit() or int(raw) > int(self.headers.get("Content-Length", "0")):
            raise Refusal(400, f"{HEADER_LENGTH} {raw[:20]!r} is not a length within the body")
        return int(raw)

    def _refuse(self, r: Refusal) -> None:
        if 0 < self._unread <= DRAIN_LIMIT:  # read and drop it, in bounded chunks: the client sees our answer
            while self._unread > 0:
                chunk = self.rfile.read(min(self._unread, 1 << 20))
                if not chunk:
                    break
                self._unread -= len(chunk)
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

    def _forward(self, body: bytes | None) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", HEADER_LENGTH.lower())}
        if body is not None:
            headers["Content-Length"] = str(len(body))
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

    def __init__(self, address: tuple[str, int], upstream: tuple[str, int], cap: RequestCap):
        super().__init__(address, FrontHandler)
        self.cap, self._upstream_address = cap, upstream
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._local = threading.local()
        self._thread: threading.Thread | None = None

    def handle_error(self, request, client_address):
        """A client that vanished or stalled (socket timeout) ends its own connection: one debug line, no
        traceback on stderr; anything else is a bug of the front, logged with its traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("connection from %s ended: %s", client_address, exc)
        else:
            log.exception("http front: unexpected error serving %s", client_address)

    def process_request(self, request, client_address):
        self._slots.acquire()  # bounds the threads: the accept loop waits while every slot is taken
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def upstream(self, method: str, path: str, body: bytes | None, headers: dict):
        """(status, relayed headers, body) of the same request sent to tritonserver, one connection per thread."""
        for attempt in (0, 1):  # a kept-alive connection that tritonserver closed meanwhile is opened once more
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection(*self._upstream_address, timeout=UPSTREAM_TIMEOUT_S)
                conn.connect()  # OSError (nothing listens): the caller answers 503
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._local.conn = conn
            try:
                conn.request(method, path, body=body, headers=headers)
                reply = conn.getresponse()
                data = reply.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
                continue
            except OSError:
                conn.close()
                self._local.conn = None
                raise
            return reply.status, [(k, v) for k, v in reply.getheaders() if k in RELAYED or k.title() in RELAYED], data
        raise AssertionError("unreachable")

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="http-front", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()  # returns once serve_forever has left its loop
        self.server_close()
