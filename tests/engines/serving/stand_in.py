"""A stand-in tritonserver for the front tests: HTTP on the Unix sockets of a SocketFolder (its HTTP and
metrics sockets), recording what reaches it, and the HTTP front before it. No tritonserver, no model."""

from __future__ import annotations

import contextlib
import http.client
import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from engines.serving.http_front import HttpFront
from engines.serving.request_limits import request_cap
from engines.serving.sockets import SocketFolder
from engines.triton.config import TensorSpec

INPUTS = [TensorSpec(n, "int64", ("batch", "sequence")) for n in ("input_ids", "attention_mask", "token_type_ids")]
CAP = request_cap(INPUTS, positions=64, max_batch=8)
MODEL = "/v2/models/tiny_onnx/infer"
KEY = "the-restriction-key"


class Upstream(BaseHTTPRequestHandler):
    """Records (method, path, body, headers, socket) of what reaches it; answers 200 with JSON naming the
    path and the socket it came through."""

    protocol_version = "HTTP/1.1"
    seen: list = []

    def log_message(self, *args):
        pass

    def address_string(self):
        return "unix"

    def _answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        where = Path(self.server.server_address).name
        Upstream.seen.append((self.command, self.path, body, dict(self.headers), where))
        data = json.dumps({"upstream": self.path, "socket": where}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer


class UnixUpstream(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@contextlib.contextmanager
def serving_front(folder: Path, **front_options):
    """The HTTP front on a free 127.0.0.1 port (yielded) before stand-ins on `folder`'s sockets."""
    sockets = SocketFolder(Path(folder))
    servers = [UnixUpstream(str(path), Upstream) for path in (sockets.http, sockets.metrics)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    front = HttpFront(("127.0.0.1", 0), sockets, CAP, KEY, **front_options)
    front.start()
    try:
        yield front.server_address[1]
    finally:
        front.stop()
        for server in servers:
            server.shutdown()
            server.server_close()


def send(port, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


def infer_json(shape, data, name="input_ids", **extra):
    item = {"name": name, "shape": shape, "datatype": "INT64", "data": data}
    return json.dumps({"inputs": [item], **extra}).encode()
