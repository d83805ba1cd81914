"""engines.serving.request_limits at its edge: a declaration of exactly the cap is served and one element more is
refused, on every path a declaration takes (typed data, binary bytes, the HTTP front's JSON, the gRPC front's
request), and the cap is --max-batch x the build's positions (x a middle axis), recomputed here, not read back."""

from __future__ import annotations

import json

import pytest

from engines.serving.http_front import Refusal, judge_infer
from engines.serving.request_limits import JSON_BYTES_PER_ELEMENT, MAX_CHOICES, input_problem, request_cap
from engines.triton.config import TensorSpec

NAMES = ("input_ids", "attention_mask", "token_type_ids")


def specs(*axes) -> list[TensorSpec]:
    return [TensorSpec(n, "int64", axes) for n in NAMES]


@pytest.mark.parametrize("max_batch,positions", [(1, 64), (8, 64), (3, 2048)])
@pytest.mark.parametrize(
    "axes,middle", [(("batch", "sequence"), 1), (("batch", 4, "sequence"), 4), (("batch", "choices", "sequence"), 0)]
)
def test_exactly_the_cap_is_served_and_one_element_more_is_not(max_batch, positions, axes, middle):
    cap = request_cap(specs(*axes), positions, max_batch)
    limit = max_batch * (middle or MAX_CHOICES) * positions
    assert cap.max_elements == limit
    for shape in ([1, limit], [limit, 1], [max_batch, limit // max_batch]):
        assert input_problem("input_ids", shape, "INT64", count=limit, cap=cap) is None, shape
        assert input_problem("input_ids", shape, "INT64", nbytes=8 * limit, cap=cap) is None, shape
    for shape in ([1, limit + 1], [limit + 1, 1]):
        why = input_problem("input_ids", shape, "INT64", count=limit + 1, cap=cap)
        assert why and f"declares {limit + 1} elements, more than the model's limit of {limit}" in why
        assert "more than the model's limit" in input_problem(
            "input_ids", shape, "INT64", nbytes=8 * (limit + 1), cap=cap
        )


def body(n: int, value: int = -(2**63)) -> bytes:
    """A JSON inference request with every input at n elements of the longest int64 text."""
    inputs = [{"name": k, "shape": [1, n], "datatype": "INT64", "data": [value] * n} for k in NAMES]
    return json.dumps({"inputs": inputs}).encode()


def test_the_http_front_serves_the_largest_request_and_refuses_one_element_more():
    """The largest request a model takes, in its longest JSON text, fits the body limit the front enforces from
    Content-Length (so the limit refuses nothing a model serves), and one element more is refused by its
    declaration."""
    cap = request_cap(specs("batch", "sequence"), 64, 8)
    judge_infer(body(cap.max_elements), None, cap)
    assert len(body(cap.max_elements)) <= cap.max_body_bytes
    assert cap.max_body_bytes <= len(NAMES) * cap.max_elements * JSON_BYTES_PER_ELEMENT + 64 * 1024
    with pytest.raises(Refusal, match=f"more than the model's limit of {cap.max_elements}"):
        judge_infer(body(cap.max_elements + 1), None, cap)


def test_the_grpc_front_judges_the_same_edge():
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is part of the dev extra")
    from tritonclient.grpc import service_pb2

    from engines.serving.grpc_front import infer_problem

    cap = request_cap(specs("batch", "sequence"), 64, 8)
    for n, ok in ((cap.max_elements, True), (cap.max_elements + 1, False)):
        request = service_pb2.ModelInferRequest(model_name="m")
        for name in NAMES:
            item = request.inputs.add(name=name, datatype="INT64", shape=[1, n])
            item.contents.int64_contents.extend([1] * n)
        assert (infer_problem(request, cap) is None) == ok, n


def test_the_server_caps_a_build_at_its_own_positions(served):
    """What engines.serving.server computes for a build: the positions the build records (its max_len), not a
    default, so the tiny build's cap is --max-batch x 64."""
    from engines.serving.ort_model import load_build
    from engines.triton.config import read_onnx_io
    from tests.fixtures.tiny_build import TINY_MAX_LEN

    model, limits, _ = load_build(served.path, "none")
    assert limits.max_sequence == TINY_MAX_LEN
    assert request_cap(read_onnx_io(model)[0], limits.max_sequence, 8).max_elements == 8 * TINY_MAX_LEN
