"""engines.client --wait: a client started beside its server polls readiness (KServe v2 ServerReady, then
ModelReady) instead of failing with "connection refused", and past the wait exits 3 naming the server. A stand-in
gRPC server that answers only the readiness calls (tritonclient's own service definition) plays the server."""

from __future__ import annotations

import socket
import threading
import time
from concurrent import futures

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from engines.client import TritonEncoderClient, main
from export.errors import UnavailableError
from tests.helpers import one_line


class Readiness(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Not ready for the first `not_ready` ServerReady calls; the model is ready once the server is."""

    def __init__(self, not_ready: int):
        self.not_ready, self.calls, self.models = not_ready, 0, []

    def ServerReady(self, request, context):
        self.calls += 1
        return service_pb2.ServerReadyResponse(ready=self.calls > self.not_ready)

    def ModelReady(self, request, context):
        self.models.append(request.name)
        return service_pb2.ModelReadyResponse(ready=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(svc: Readiness, port: int) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(svc, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def test_wait_polls_until_the_server_and_the_model_are_ready():
    svc, port = Readiness(not_ready=3), free_port()
    server = serve(svc, port)
    try:
        with TritonEncoderClient(f"127.0.0.1:{port}", "ckpt_onnx", "grpc") as client:
            client.wait_ready(30, poll_s=0.05)
    finally:
        server.stop(None)
    assert svc.calls == 4 and svc.models == ["ckpt_onnx"]


def test_wait_outlasts_a_server_that_starts_late():
    """Nothing listens at first (the README case: the client is started right after the server)."""
    svc, port = Readiness(not_ready=0), free_port()
    started: list[grpc.Server] = []
    timer = threading.Timer(1.5, lambda: started.append(serve(svc, port)))
    timer.start()
    try:
        t0 = time.monotonic()
        with TritonEncoderClient(f"127.0.0.1:{port}", "m", "grpc") as client:
            client.wait_ready(60, poll_s=0.1)
        waited = time.monotonic() - t0
    finally:
        timer.join()
        for s in started:
            s.stop(None)
    assert 1.4 <= waited < 30 and svc.models == ["m"]


def test_wait_gives_up_naming_the_server():
    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with TritonEncoderClient(url, "m", "grpc") as client, pytest.raises(UnavailableError) as e:
        client.wait_ready(1, poll_s=0.1)
    assert 0.9 <= time.monotonic() - t0 < 10 and url in str(e.value) and "after 1 s" in str(e.value)
    assert e.value.exit_code == 3


@pytest.mark.parametrize("wait", ["-1", "nan"])
def test_a_negative_wait_is_usage(tmp_path, capsys, wait):
    with pytest.raises(SystemExit) as e:
        main(["--vocab", str(tmp_path / "v.txt"), "--model", "m", "--wait", wait, "hi"])
    assert e.value.code == 2 and "--wait" in one_line(capsys)


def test_the_api_refuses_a_negative_wait_before_connecting(tmp_path):
    from engines.client import TextEncoder
    from export.errors import UsageError

    with pytest.raises(UsageError, match="--wait"):
        TextEncoder(tmp_path / "v.txt", "127.0.0.1:1", "m", wait_s=-1)
