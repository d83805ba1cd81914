"""The public gRPC port of engines.serving: a front before tritonserver's gRPC Unix socket.

In:  the public host:port, tritonserver's gRPC target (unix:<path>), the served model's RequestCap, the
     restriction key.
Out: a grpc.Server that forwards the KServe v2 methods tritonclient uses (live, ready, metadata, config,
     statistics, repository index, ModelInfer) as raw bytes, after checking every ModelInfer input's
     declaration (shape non-negative and within the cap, data of exactly the declared size; the same
     request_limits as the HTTP front) and every parameter of the request, its inputs and its requested
     outputs (request_parameters: shared memory nowhere). Refused: INVALID_ARGUMENT with one line; a message
     over the cap is RESOURCE_EXHAUSTED (gRPC's own receive limit); streaming inference, shared memory,
     model load/unload, logging and trace settings are UNIMPLEMENTED here. No client metadata is passed on
     (tritonserver reads only its restriction key from it); the key goes with RepositoryIndex alone.
     A connection silent for IDLE_S (no HTTP/2 handshake, or no call) is closed. gRPC's core reads each
     message whole before a worker sees it, so a slow sender holds no worker thread.
Why: over gRPC tritonserver 2.51 compares the declared byte size with the data, but in 64 bits: an INT64
input of shape [1, 2**61 + 1] with 8 bytes of data passes and kills the model's backend stub, after which
tritonserver answers every request with "Stub process is not healthy" while reporting itself ready.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from engines.serving.request_limits import RequestCap, input_problem
from engines.serving.request_parameters import parameter_problem
from engines.serving.tritonserver import RESTRICTION_HEADER
from export.errors import UnavailableError

MISSING: str | None  # why grpc cannot be imported here; None: it can
try:  # the dev and serving extras; without them `python -m engines.serving --help` still works
    import grpc
    from tritonclient.grpc import service_pb2
except Exception as e:  # ImportError, or the RuntimeError of a tritonclient installed without [grpc]
    grpc = service_pb2 = None
    MISSING = f"{type(e).__name__}: {e}"
else:
    MISSING = None

log = logging.getLogger(__name__)

SERVICE = "/inference.GRPCInferenceService/"
FORWARDED = {
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "ModelInfer",
}
STREAMING = {"ModelStreamInfer"}
KEYED = "RepositoryIndex"  # the one forwarded method behind tritonserver's restriction key
KEY_METADATA = f"triton-grpc-protocol-{RESTRICTION_HEADER}"
WORKERS = 16  # requests handled at once; more wait in gRPC's queue
IDLE_S = 30.0  # a connection silent this long (no handshake, or no call) is closed, as at the HTTP front
UPSTREAM_TIMEOUT_S = 600.0  # when the client set no deadline
TYPED_CONTENTS = {  # datatype -> the InferTensorContents field that carries it
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "INT64": "int64_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def infer_problem(request, cap: RequestCap) -> str | None:
    """The one-line reason a ModelInferRequest cannot be served as declared, or asks for more than
    inference (a parameter outside request_parameters' list), else None."""
    if not request.inputs:
        return "request has no inputs; send the inputs the model's metadata lists"
    places = [("request", "the request", request.parameters)]
    places += [("output", f"output {out.name[:40]!r}", out.parameters) for out in request.outputs]
    places += [("input", f"input {item.name[:40]!r}", item.parameters) for item in request.inputs]
    for place, where, params in places:
        problem = parameter_problem(place, where, _values(params), "grpc")
        if problem:
            return problem
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        return f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input"
    for i, item in enumerate(request.inputs):
        shape = list(item.shape)
        if raw:
            problem = input_problem(item.name, shape, item.datatype, nbytes=len(raw[i]), cap=cap)
        else:
            field = TYPED_CONTENTS.get(item.datatype)
            count = len(getattr(item.contents, field)) if field else None
            problem = input_problem(item.name, shape, item.datatype, count=count, cap=cap)
        if problem:
            return problem
    return None


def _values(parameters) -> dict:
    """{name: value} of an InferParameter map (a double or bytes value as its field name: never taken)."""
    out = {}
    for name, p in parameters.items():
        which = p.WhichOneof("parameter_choice")
        out[name] = (
            getattr(p, which) if which in ("bool_param", "int64_param", "uint64_param", "string_param") else which
        )
    return out


def require_grpc() -> None:
    if MISSING is not None:
        raise UnavailableError(
            f"grpcio and tritonclient[grpc] are needed for the gRPC front ({MISSING}); pip install -e '.[serving]'"
        )


_HANDLER: Any = grpc.GenericRpcHandler if grpc is not None else object  # grpc has no type stubs here


class FrontHandler(_HANDLER):
    def __init__(self, channel, cap: RequestCap, key: str):
        self.channel, self.cap = channel, cap
        self.metadata = [(KEY_METADATA, key)]

    def service(self, details):
        name = details.method[len(SERVICE) :] if details.method.startswith(SERVICE) else None
        if name in STREAMING:
            return grpc.stream_stream_rpc_method_handler(self._not_offered)
        if name not in FORWARDED:
            return grpc.unary_unary_rpc_method_handler(self._not_offered)
        upstream = self.channel.unary_unary(details.method)  # bytes in, bytes out

        def forward(body: bytes, context) -> bytes:
            if name == "ModelInfer":
                self._check(body, context)
            metadata = self.metadata if name == KEYED else None  # never the client's own
            remaining = context.time_remaining()  # None, or a huge number, when the client set no deadline
            timeout = UPSTREAM_TIMEOUT_S if remaining is None else min(remaining, UPSTREAM_TIMEOUT_S)
            try:
                return upstream(body, metadata=metadata, timeout=timeout)
            except grpc.RpcError as e:  # tritonserver's own answer, relayed with its code
                code = e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNAVAILABLE
                details_text = e.details() if isinstance(e, grpc.Call) else str(e)
            context.abort(code, details_text)
            raise AssertionError("context.abort raises")  # gRPC ends the call there

        return grpc.unary_unary_rpc_method_handler(forward)

    def _check(self, body: bytes, context) -> None:
        request = service_pb2.ModelInferRequest()
        problem: str | None
        try:
            request.ParseFromString(body)
        except Exception as e:  # protobuf raises DecodeError (a plain Exception subclass); answered below
            problem = f"request is not a ModelInferRequest ({type(e).__name__})"
        else:
            problem = infer_problem(request, self.cap)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)

    @staticmethod
    def _not_offered(_request, context):
        context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "this method is not offered on this port (health, metadata, config, statistics and ModelInfer are)",
        )


def start_grpc_front(address: str, upstream: str, cap: RequestCap, key: str, idle_s: float = IDLE_S):
    """Serve the front on `address` (host:port, port 0: a free one) before tritonserver at `upstream`
    (unix:<path>); returns the server, its upstream channel (stop and close both) and the port it listens on."""
    require_grpc()
    channel = grpc.insecure_channel(
        upstream, options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    )
    server = grpc.server(
        ThreadPoolExecutor(WORKERS, thread_name_prefix="grpc-front"),
        handlers=(FrontHandler(channel, cap, key),),
        options=[
            ("grpc.max_receive_message_length", cap.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
            ("grpc.server_handshake_timeout_ms", int(idle_s * 1000)),  # a connection that never speaks HTTP/2
            ("grpc.max_connection_idle_ms", int(idle_s * 1000)),  # one with no call (GOAWAY: clients reconnect)
        ],
    )
    port = server.add_insecure_port(address)
    if port == 0:
        channel.close()
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, channel, port
