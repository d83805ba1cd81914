"""The serving fronts and the watchdog without tritonserver (main environment): a hostile declaration or
parameter is refused before anything is forwarded, a valid request is forwarded byte for byte to a stand-in
tritonserver on a Unix socket and its answer relayed, and a dead server or backend stub is reported with
its cause and exit code 5. Slow clients: engines/serving/tests in test_slow_clients.py."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys

import numpy as np
import pytest

from engines.serving.http_front import HttpFront
from engines.serving.request_limits import RequestCap, input_problem
from engines.serving.sockets import SocketFolder
from engines.serving.tritonserver import server_death
from export.errors import EXIT_SERVER_DIED
from tests.engines.serving.stand_in import CAP, KEY, MODEL, Upstream, infer_json, send, serving_front


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    with serving_front(tmp_path_factory.mktemp("sockets")) as port:
        yield port


def test_the_cap_follows_the_model():
    assert CAP == RequestCap(max_elements=8 * 64, n_inputs=3, max_batch=8, positions=64)
    from engines.serving.request_limits import request_cap
    from engines.triton.config import TensorSpec

    choices = [TensorSpec("input_ids", "int64", ("batch", 4, "sequence"))]
    assert request_cap(choices, 64, 2).max_elements == 2 * 4 * 64


@pytest.mark.parametrize(
    "shape,kw,expected",
    [
        ([1, 1_000_000_000_000], {"count": 1}, "declares 1000000000000 elements, more than the model's limit of 512"),
        ([1, 2**61 + 1], {"nbytes": 8}, "more than the model's limit"),  # 8 * (2**61 + 1) wraps to 8 in 64 bits
        ([1, -3], {"count": 1}, "negative dimension"),
        ([1, 3], {"count": 2}, "declares 3 elements but the data holds 2"),
        ([1, 3], {"nbytes": 16}, "is 24 bytes but the data holds 16"),
        ("[1, 3]", {"count": 3}, "shape must be a list of non-negative integers"),
        ([1, True], {"count": 1}, "shape must be a list of non-negative integers"),
    ],
)
def test_declarations_that_cannot_be_served(shape, kw, expected):
    assert expected in input_problem("input_ids", shape, "INT64", cap=CAP, **kw)
    assert input_problem("input_ids", [2, 64], "INT64", count=128, cap=CAP) is None
    assert "datatype 'BYTES' is not served" in input_problem("input_ids", [1], "BYTES", count=1, cap=CAP)


@pytest.mark.parametrize(
    "body,status,expected",
    [
        (infer_json([1, 1_000_000_000_000], [1]), 400, "more than the model's limit of 512"),
        (infer_json([1, 3], [1, 2]), 400, "declares 3 elements but 'data' holds 2"),
        (infer_json([1, 3], [[1, 2, 3, 4]]), 400, "declares 3 elements but 'data' holds 4 (nested as [1, 4])"),
        (infer_json([2, 2], [[1, 2], [3]]), 400, "ragged nested list"),
        (infer_json([1, 2], [1.5, 2]), 400, "must be an integer in [-9223372036854775808, 9223372036854775807]"),
        (infer_json([1, 2], [True, 2]), 400, "must be an integer"),
        (infer_json([1, 1], [2**70]), 400, "must be an integer"),
        (infer_json([1, -1], [1]), 400, "negative dimension"),
        (b'{"inputs": [{"name"', 400, "request body is not valid JSON"),
        (b"[" * 90_000, 400, "request body is not valid JSON"),  # nested past Python's recursion limit
        (infer_json([1, 2], [[1], {"a": 1}]), 400, "'data' mixes lists and values"),
        (infer_json([1, 1], {"a": 1}), 400, "'data' must be a list"),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input_ids",
                            "shape": [1],
                            "datatype": "INT64",
                            "data": [1],
                            "parameters": {"shared_memory_region": "r"},
                        }
                    ]
                }
            ).encode(),
            400,
            "shared memory",
        ),
        (b"{}", 400, "request has no 'inputs' list"),
    ],
)
def test_hostile_json_is_refused_before_forwarding(front, body, status, expected):
    Upstream.seen.clear()
    code, data, _ = send(front, "POST", MODEL, body, {"Content-Type": "application/json"})
    error = json.loads(data)["error"]
    assert code == status and expected in error and "\n" not in error, (code, error)
    assert Upstream.seen == []


def test_body_over_the_cap_is_refused_from_its_length(front):
    Upstream.seen.clear()
    body = b" " * (CAP.max_body_bytes + 1)
    code, data, headers = send(front, "POST", MODEL, body)
    assert code == 413 and "exceeds the model's limit" in json.loads(data)["error"]
    assert Upstream.seen == []
    conn = http.client.HTTPConnection("127.0.0.1", front, timeout=60)
    conn.putrequest("POST", MODEL)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 411 and "Content-Length" in json.loads(r.read())["error"]
    conn.close()


def test_valid_requests_are_forwarded_unchanged(front):
    Upstream.seen.clear()
    body = infer_json([1, 3], [[2, 7, 3]])  # nested row-major data counts its leaves
    assert send(front, "POST", MODEL, body, {"Content-Type": "application/json"})[0] == 200
    ids = np.arange(6, dtype=np.int64)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input_ids",
                    "shape": [2, 3],
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": ids.nbytes},
                }
            ]
        }
    ).encode()
    binary = header + ids.tobytes()
    hdr = {"Inference-Header-Content-Length": str(len(header))}
    code, data, _ = send(front, "POST", MODEL, binary, hdr)
    assert code == 200 and json.loads(data)["upstream"] == MODEL
    assert [s[2] for s in Upstream.seen] == [body, binary]
    assert Upstream.seen[1][3]["Inference-Header-Content-Length"] == str(len(header))
    code, data, _ = send(front, "POST", MODEL, binary[:-8], hdr)  # one element short of what the header says
    assert code == 400 and "the binary section holds 40 bytes but the inputs declare 48" in json.loads(data)["error"]
    short = header.replace(b'"binary_data_size": 48', b'"binary_data_size": 40')
    code, data, _ = send(
        front, "POST", MODEL, short + ids.tobytes()[:40], {"Inference-Header-Content-Length": str(len(short))}
    )
    assert code == 400 and "is 48 bytes but the data holds 40" in json.loads(data)["error"]
    assert len(Upstream.seen) == 2


def test_only_the_offered_endpoints_are_forwarded(front):
    Upstream.seen.clear()
    for path in ("/v2/health/ready", "/v2/models/tiny_onnx/config", "/v2/models/tiny_onnx/versions/1/ready"):
        assert send(front, "GET", path)[0] == 200
    for method, path in (
        ("POST", "/v2/logging"),
        ("POST", "/v2/systemsharedmemory/region/r/register"),
        ("POST", "/v2/repository/models/tiny_onnx/unload"),
        ("GET", "/v2/trace/setting"),
        ("DELETE", "/v2/models/tiny_onnx"),
    ):
        code, data, _ = send(front, method, path, b"{}")
        assert code == 404 and "not offered on this port" in json.loads(data)["error"], (method, path)
    assert [s[1] for s in Upstream.seen] == [
        "/v2/health/ready",
        "/v2/models/tiny_onnx/config",
        "/v2/models/tiny_onnx/versions/1/ready",
    ]


def test_a_dead_upstream_is_503_not_a_hang(tmp_path):
    f = HttpFront(("127.0.0.1", 0), SocketFolder(tmp_path), CAP, KEY)  # no socket in that folder
    f.start()
    try:
        code, data, _ = send(f.server_address[1], "GET", "/v2/health/ready")
    finally:
        f.stop()
    assert code == 503 and "does not answer" in json.loads(data)["error"]


def test_grpc_declarations_are_judged_like_http():
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (dev extra) not installed")
    from tritonclient.grpc import service_pb2

    from engines.serving.grpc_front import infer_problem

    def request(shape, raw=None, typed=None):
        r = service_pb2.ModelInferRequest(model_name="tiny_onnx")
        t = r.inputs.add(name="input_ids", datatype="INT64", shape=shape)
        if raw is not None:
            r.raw_input_contents.append(raw)
        if typed is not None:
            t.contents.int64_contents.extend(typed)
        return r

    assert "more than the model's limit" in infer_problem(request([1, 2**61 + 1], raw=b"\0" * 8), CAP)
    assert "data holds 1" in infer_problem(request([1, 3], typed=[1]), CAP)
    assert "negative dimension" in infer_problem(request([1, -1], raw=b""), CAP)
    assert infer_problem(request([1, 3], raw=b"\0" * 24), CAP) is None
    assert infer_problem(request([1, 3], typed=[1, 2, 3]), CAP) is None


@pytest.mark.timeout(120)
def test_watchdog_names_the_dead_server_and_exits_5(tmp_path):
    log = tmp_path / "tritonserver.log"
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    stub = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert server_death(server, [stub.pid], log) is None
        stub.kill()
        stub.wait()
        died = server_death(server, [stub.pid], log)
        assert died.exit_code == EXIT_SERVER_DIED == 5
        assert (
            str(died)
            == f"the model's Python backend stub (pid {stub.pid}) exited, so tritonserver serves nothing; see {log}"
        )
        server.send_signal(signal.SIGABRT)  # what std::bad_alloc's abort looks like from outside
        server.wait()
        assert str(server_death(server, [], log)) == f"tritonserver exited (signal SIGABRT); see {log}"
    finally:
        for p in (server, stub):
            p.kill()
            p.wait()


def test_watch_raises_the_death_it_sees():
    from engines.serving.__main__ import watch
    from export.errors import ServerDiedError

    class Server:
        polls = 0

        def death(self):
            self.polls += 1
            return ServerDiedError("tritonserver exited (exit code 1); see log") if self.polls == 3 else None

    s = Server()
    with pytest.raises(ServerDiedError, match="exit code 1"):
        watch(s, interval_s=0.01)
    assert s.polls == 3


def test_usage_is_checked_before_availability(tmp_path, capsys):
    """A missing build is exit 2 even where tritonserver is missing; a build that is fine but no tritonserver
    (the main environment: no nvidia-pytriton, numpy 2) is exit 3 with the reason, and nothing keeps running."""
    import importlib.util

    from engines.serving.__main__ import main

    assert main(["--build", str(tmp_path / "missing"), "--http-port", "0", "--grpc-port", "0"]) == 2
    assert "export.build" in capsys.readouterr().err
    assert main(["--build", str(tmp_path), "--max-batch", "0"]) == 2
    assert "--max-batch must be >= 1" in capsys.readouterr().err
    if importlib.util.find_spec("pytriton") is None:
        from engines.serving.server import check_runtime
        from export.errors import UnavailableError

        with pytest.raises(UnavailableError, match="nvidia-pytriton is not installed"):
            check_runtime()
