"""What an HTTP inference body may hold, judged before tritonserver sees a byte of it (the HTTP front's checks).

In:  the body of a POST .../infer, the Inference-Header-Content-Length (binary tensors) or None, the
     served model's RequestCap.
Out: `judge_infer(...)`, which raises Refusal(400) with one line for: invalid JSON, no inputs, an input
     whose declared shape is negative, over the cap or does not match its data (JSON elements, or
     binary_data_size and the binary section), and any parameter outside request_parameters' list
     (shared memory anywhere included) on the request, an input or a requested output.
Why: engines.serving.request_limits (declarations) and engines.serving.request_parameters (parameters).
"""

from __future__ import annotations

import json

from engines.serving.request_limits import RequestCap, input_problem
from engines.serving.request_parameters import parameter_problem

HEADER_LENGTH = "Inference-Header-Content-Length"  # KServe binary tensor extension


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
    """Raise Refusal(400) when this inference body cannot be served as declared or asks for more than
    inference (a parameter outside request_parameters' list)."""
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
    _refuse(parameter_problem("request", "the request", request.get("parameters")))
    outputs = request.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise Refusal(400, "'outputs' must be a list of objects with a name")
    for out in outputs:
        _refuse(parameter_problem("output", f"output {str(out.get('name'))[:40]!r}", out.get("parameters")))
    binary_total = 0
    for item in inputs:
        if not isinstance(item, dict):
            raise Refusal(400, "every entry of 'inputs' must be an object with name, shape, datatype and data")
        name, params = item.get("name"), item.get("parameters")
        _refuse(parameter_problem("input", f"input {str(name)[:40]!r}", params))
        size = (params or {}).get("binary_data_size")
        if size is not None:
            if header_length is None:
                raise Refusal(400, f"input {name!r}: binary_data_size needs the {HEADER_LENGTH} header")
            problem = input_problem(name, item.get("shape"), item.get("datatype"), nbytes=size, cap=cap)
            binary_total += size
        elif "data" in item:
            problem = input_problem(name, item.get("shape"), item.get("datatype"), cap=cap)
            problem = problem or data_problem(name, item["data"], item["shape"], item["datatype"])
        else:
            problem = f"input {name!r} has neither 'data' nor a binary_data_size parameter"
        _refuse(problem)
    if header_length is not None and binary_total != len(body) - header_length:
        raise Refusal(
            400,
            f"the binary section holds {len(body) - header_length} bytes but the inputs declare "
            f"{binary_total}; send matching data",
        )


def _refuse(problem: str | None) -> None:
    if problem:
        raise Refusal(400, problem)
