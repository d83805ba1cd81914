"""What a request may declare, judged before tritonserver sees a byte of it (the fronts' checks).

In:  the served model's inputs (engines.triton.config.TensorSpec), its positions and --max-batch.
Out: `RequestCap` (the most elements one input may declare, the most bytes a body may have) and
     `input_problem(...)`, the one-line reason an input's declaration cannot be served, else None.

Why: tritonserver 2.51 (nvidia-pytriton 0.7) allocates what a request declares before it compares the
declaration with the data: an HTTP JSON input of shape [1, 1000000000000] with one data element aborts the
whole server (std::bad_alloc), and a gRPC input whose byte size overflows 64 bits to the size of its data
([1, 2**61 + 1] INT64 with 8 bytes) kills the model's backend stub while tritonserver stays up, answering
every later request with "Stub process is not healthy". So the fronts (engines.serving.http_front,
engines.serving.grpc_front) refuse such requests themselves. No project imports: plain arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# KServe v2 datatype -> bytes per element (BYTES has none: variable length, and no input of ours takes it)
ELEMENT_BYTES = {
    "BOOL": 1,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "FP16": 2,
    "BF16": 2,
    "UINT32": 4,
    "INT32": 4,
    "FP32": 4,
    "UINT64": 8,
    "INT64": 8,
    "FP64": 8,
}
JSON_BYTES_PER_ELEMENT = 21  # the longest int64 in JSON text, "-9223372036854775808", and its comma
HEADER_SLACK = 64 * 1024  # names, shapes, parameters and whitespace around the data
MAX_CHOICES = 16  # a symbolic middle axis (multiple choice: [batch, choices, sequence]) counts this much
DEFAULT_POSITIONS = 8192  # when the build records no positions at all (then the model checks nothing either)


@dataclass(frozen=True)
class RequestCap:
    max_elements: int  # per input: --max-batch x (choices) x positions
    n_inputs: int
    max_batch: int
    positions: int

    @property
    def max_body_bytes(self) -> int:
        """Every input at its largest, written as JSON text (binary data is smaller), plus the header."""
        return self.n_inputs * self.max_elements * JSON_BYTES_PER_ELEMENT + HEADER_SLACK


def request_cap(inputs, positions: int | None, max_batch: int) -> RequestCap:
    """The cap for a model whose inputs are `inputs` (TensorSpec: [batch, ..., sequence])."""
    positions = positions or DEFAULT_POSITIONS
    widest = 1
    for spec in inputs:
        middle = [d if isinstance(d, int) and d > 0 else MAX_CHOICES for d in spec.shape[1:-1]]
        widest = max(widest, math.prod(middle))
    return RequestCap(max(1, max_batch) * widest * positions, len(inputs), max(1, max_batch), positions)


def declared_elements(name: str, shape, cap: RequestCap) -> tuple[int | None, str | None]:
    """(element count, None) for a valid declared shape, else (None, the reason)."""
    if not isinstance(shape, (list, tuple)) or not all(type(d) is int for d in shape):
        return None, f"input {name!r}: shape must be a list of non-negative integers, got {str(shape)[:80]}"
    if any(d < 0 for d in shape):
        return None, f"input {name!r}: shape {list(shape)} has a negative dimension; declare the real shape"
    n = math.prod(shape)
    if n > cap.max_elements:
        return None, (
            f"input {name!r}: shape {list(shape)[:8]} declares {n} elements, more than the model's limit of "
            f"{cap.max_elements} (--max-batch {cap.max_batch} x {cap.positions} positions); "
            f"send at most {cap.positions} tokens per sequence"
        )
    return n, None


def input_problem(
    name, shape, datatype, *, count: int | None = None, nbytes: int | None = None, cap: RequestCap
) -> str | None:
    """Why an input declaring `shape` and `datatype` with `count` data elements (JSON, typed gRPC contents)
    or `nbytes` bytes of data (binary HTTP, raw gRPC contents) cannot be served, else None."""
    if not isinstance(name, str) or not name:
        return "every input needs a non-empty string 'name'"
    n, problem = declared_elements(name, shape, cap)
    if n is None:  # declared_elements gives a count or a reason, never neither
        return problem
    if datatype not in ELEMENT_BYTES:
        return f"input {name!r}: datatype {str(datatype)[:20]!r} is not served here; send INT64"
    if count is not None and count != n:
        return (
            f"input {name!r}: shape {list(shape)} declares {n} elements but the data holds {count}; send matching data"
        )
    if nbytes is not None and nbytes != n * ELEMENT_BYTES[datatype]:
        return (
            f"input {name!r}: shape {list(shape)} of {datatype} is {n * ELEMENT_BYTES[datatype]} bytes but the "
            f"data holds {nbytes}; send matching data"
        )
    return None
