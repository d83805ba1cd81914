"""What the fronts pass on to tritonserver, without tritonserver (a stand-in on Unix sockets): length headers
in ASCII digits only, request parameters from tritonclient's own list and nothing else (shared memory
refused on the request, its inputs and its outputs, over HTTP and gRPC), tritonclient's own request bodies
passed unchanged, the restriction key sent with the repository index alone, /metrics to the metrics socket."""

from __future__ import annotations

import json
import logging
import socket

import numpy as np
import pytest

from engines.serving.tritonserver import RESTRICTION_HEADER
from tests.engines.serving.stand_in import CAP, KEY, MODEL, Upstream, infer_json, send, serving_front


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    with serving_front(tmp_path_factory.mktemp("sockets")) as port:
        yield port


def raw_exchange(port: int, head: bytes, body: bytes = b"") -> bytes:
    """Send bytes as they are (header values no client library would write); the answer, until close."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + body)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


BODY = infer_json([1, 3], [1, 2, 3])


@pytest.mark.parametrize(
    "headers,expected",
    [
        (b"Content-Length: \xb2\r\n", "Content-Length '\u00b2' is not a length in ASCII digits"),  # isdigit() is true
        (b"Content-Length: \xb9\xb2\r\n", "is not a length in ASCII digits"),
        (b"Content-Length: +%d\r\n" % len(BODY), "is not a length in ASCII digits"),  # int() takes it
        (b"Content-Length: %d\xa0\r\n" % len(BODY), "is not a length in ASCII digits"),  # str.strip() takes it
        (b"Content-Length: 1" + b"0" * 4400 + b"\r\n", "is not a length in ASCII digits"),  # past int()'s 4300 digits
        (
            b"Content-Length: %d\r\nInference-Header-Content-Length: \xb9\xb2\r\n" % len(BODY),
            "Inference-Header-Content-Length '\u00b9\u00b2' is not a length in ASCII digits",
        ),
        (
            b"Content-Length: %d\r\nInference-Header-Content-Length: %d\r\n" % (len(BODY), len(BODY) + 1),
            "is not a length within the body",
        ),
    ],
)
def test_length_headers_are_ascii_digits(front, caplog, headers, expected):
    """`Content-Length: ²` passed str.isdigit(), int() raised, the client got no answer and a traceback
    went to the log. Now: a one-line 400 and nothing logged above debug."""
    Upstream.seen.clear()
    head = b"POST " + MODEL.encode() + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    with caplog.at_level(logging.INFO, logger="engines.serving"):
        answer = raw_exchange(front, head, BODY)
    status, _, rest = answer.partition(b"\r\n")
    error = json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]
    assert status == b"HTTP/1.1 400 Bad Request" and expected in error and "\n" not in error, answer[:300]
    assert caplog.records == [] and Upstream.seen == []


SHARED = {"shared_memory_region": "steal", "shared_memory_byte_size": 128}


@pytest.mark.parametrize(
    "extra,input_params,expected",
    [  # the first one crashed tritonserver through the public front once a region was registered
        (
            {"outputs": [{"name": "sentence_embedding", "parameters": SHARED}]},
            None,
            "output 'sentence_embedding': shared",
        ),
        ({"parameters": SHARED}, None, "the request: shared memory is not offered"),
        ({}, {"shared_memory_region": "steal"}, "input 'input_ids': shared memory is not offered"),
        ({}, {"shared_memory_offset": 4096}, "input 'input_ids': shared memory is not offered"),
        ({"parameters": {"my_parameter": 1}}, None, "parameter 'my_parameter' is not taken here"),
        ({"outputs": [{"name": "o", "parameters": {"binary_data_size": 8}}]}, None, "output 'o': parameter 'binary"),
        ({}, {"binary_data": True}, "input 'input_ids': parameter 'binary_data' is not taken here"),
        ({"parameters": {"priority": -1}}, None, "parameter 'priority' must be a non-negative integer"),
        ({"parameters": {"binary_data_output": "yes"}}, None, "parameter 'binary_data_output' must be true or false"),
        ({"outputs": [{"name": "o", "parameters": {"binary_data": 1}}]}, None, "'binary_data' must be true or false"),
        ({"parameters": []}, None, "the request: 'parameters' must be an object"),
        ({"outputs": "sentence_embedding"}, None, "'outputs' must be a list of objects"),
    ],
)
def test_parameters_outside_the_list_are_refused(front, extra, input_params, expected):
    Upstream.seen.clear()
    body = json.loads(infer_json([1, 3], [1, 2, 3], **extra))
    if input_params is not None:
        body["inputs"][0]["parameters"] = input_params
    code, data, _ = send(front, "POST", MODEL, json.dumps(body).encode(), {"Content-Type": "application/json"})
    error = json.loads(data)["error"]
    assert code == 400 and expected in error and "\n" not in error, (code, error)
    assert Upstream.seen == []


def _http_inputs(th, binary: bool):
    ids = np.arange(6, dtype=np.int64).reshape(2, 3)
    inputs = []
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        i = th.InferInput(name, [2, 3], "INT64")
        i.set_data_from_numpy(ids, binary_data=binary)
        inputs.append(i)
    return inputs


def test_tritonclients_own_http_requests_pass_unchanged(front):
    """What tritonclient 2.x writes (its own request builder, every option engines.client or a user sets
    that does not ask for shared memory) reaches tritonserver byte for byte; with shared memory it does not."""
    try:  # without [http], tritonclient.http raises RuntimeError on import
        import tritonclient.http as th
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"tritonclient[http] (serving extra; .ci/run runs this in .venv-serving): {e}")
    outputs = [th.InferRequestedOutput("sentence_embedding"), th.InferRequestedOutput("last_hidden_state", False, 2)]
    variants = [
        {"inputs": _http_inputs(th, True)},  # no outputs named: binary_data_output
        {"inputs": _http_inputs(th, True), "outputs": outputs, "priority": 2, "timeout": 10_000_000},
        {"inputs": _http_inputs(th, False), "outputs": outputs[:1], "request_id": "r1"},
        {"inputs": _http_inputs(th, True), "sequence_id": 7, "sequence_start": True, "sequence_end": True},
    ]
    Upstream.seen.clear()
    for kw in variants:
        body, json_size = th.InferenceServerClient.generate_request_body(**kw)
        headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
        code, data, _ = send(front, "POST", MODEL, body, headers)
        assert code == 200, (kw.keys(), data)
        assert Upstream.seen[-1][2] == body
    shared_out = th.InferRequestedOutput("sentence_embedding")
    shared_out.set_shared_memory("steal", 128)
    shared_in = _http_inputs(th, True)
    shared_in[0].set_shared_memory("steal", 48, offset=4096)
    for kw in ({"inputs": _http_inputs(th, True), "outputs": [shared_out]}, {"inputs": shared_in}):
        body, json_size = th.InferenceServerClient.generate_request_body(**kw)
        headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
        code, data, _ = send(front, "POST", MODEL, body, headers)
        assert code == 400 and "shared memory is not offered" in json.loads(data)["error"]
    assert len(Upstream.seen) == len(variants)


def test_tritonclients_own_grpc_requests_pass_and_shared_memory_does_not():
    tg = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (dev extra) not installed")
    from tritonclient.grpc._utils import _get_inference_request

    from engines.serving.grpc_front import infer_problem

    def request(outputs=(), shared_input=False, **kw):
        ids = np.arange(6, dtype=np.int64).reshape(2, 3)
        inputs = []
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            i = tg.InferInput(name, [2, 3], "INT64")
            i.set_data_from_numpy(ids)
            inputs.append(i)
        if shared_input:
            inputs[0].set_shared_memory("steal", 48, offset=4096)
        args = {"sequence_id": 0, "sequence_start": False, "sequence_end": False, "priority": 0, "timeout": None}
        args.update(kw)
        return _get_inference_request(
            model_name="tiny_onnx",
            inputs=inputs,
            model_version="",
            request_id="",
            outputs=list(outputs) or None,
            parameters=None,
            **args,
        )

    plain = tg.InferRequestedOutput("sentence_embedding")
    ranked = tg.InferRequestedOutput("last_hidden_state", class_count=2)
    assert infer_problem(request(), CAP) is None
    assert infer_problem(request([plain, ranked], priority=2, timeout=10_000_000), CAP) is None
    assert infer_problem(request(sequence_id="s1", sequence_start=True, sequence_end=True), CAP) is None
    shared = tg.InferRequestedOutput("sentence_embedding")
    shared.set_shared_memory("steal", 128)
    assert "output 'sentence_embedding': shared memory is not offered" in infer_problem(request([shared]), CAP)
    assert "input 'input_ids': shared memory is not offered" in infer_problem(request(shared_input=True), CAP)
    r = request()
    r.parameters["shared_memory_region"].string_param = "steal"
    assert "the request: shared memory is not offered" in infer_problem(r, CAP)
    r = request()
    r.parameters["my_parameter"].double_param = 1.5
    assert "parameter 'my_parameter' is not taken here" in infer_problem(r, CAP)
    r = request()
    r.parameters["priority"].string_param = "high"
    assert "parameter 'priority' must be a non-negative integer" in infer_problem(r, CAP)


def test_the_key_goes_with_the_repository_index_alone_and_metrics_to_their_socket(front):
    Upstream.seen.clear()
    attempt = {RESTRICTION_HEADER: "a-key-of-the-client's"}
    assert send(front, "POST", "/v2/repository/index", b"{}", attempt)[0] == 200
    assert send(front, "POST", MODEL, infer_json([1, 3], [1, 2, 3]), attempt)[0] == 200
    assert send(front, "GET", "/v2/health/ready", b"", attempt)[0] == 200
    assert send(front, "GET", "/metrics")[0] == 200
    keys = [{k.lower(): v for k, v in seen[3].items()}.get(RESTRICTION_HEADER) for seen in Upstream.seen]
    assert keys == [KEY, None, None, None]
    assert [seen[4] for seen in Upstream.seen] == ["http.sock", "http.sock", "http.sock", "metrics.sock"]
    code, data, _ = send(
        front, "POST", "/v2/systemsharedmemory/region/steal/register", b"{}", {RESTRICTION_HEADER: KEY}
    )
    assert code == 404 and len(Upstream.seen) == 4
