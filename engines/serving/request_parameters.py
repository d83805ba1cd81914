"""Which inference-request parameters the fronts pass on: exactly those tritonclient 2.x and engines.client
send (read from tritonclient's http/_utils.py, http/_infer_input.py, http/_requested_output.py and their
grpc twins, 2.50-2.73), nothing else.

In:  a parameters map of a request, of one of its inputs or of one of its requested outputs (HTTP JSON
     object, or a gRPC InferParameter map read into {name: value}), and the place it was found.
Out: `parameter_problem(...)`: the one-line reason to refuse it, else None.

Why: a parameter is an instruction to tritonserver. `shared_memory_region` (with `shared_memory_byte_size`,
`shared_memory_offset`) on an input or an output makes tritonserver read or write a registered region:
a region over the Python backend's own /dev/shm memory echoed server memory in an error message (input) or
crashed tritonserver 1.7 s later (output), so shared memory is refused wherever it appears. Every other
name outside the list is refused too: what a future tritonserver gives meaning to is not passed on unseen.

    place    HTTP (JSON)                                             gRPC (InferParameter)
    request  binary_data_output, priority, timeout, sequence_id,     priority, timeout, sequence_id,
             sequence_start, sequence_end                            sequence_start, sequence_end
    input    binary_data_size                                        (none)
    output   binary_data, classification                             classification
"""

from __future__ import annotations

SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
BOOL, COUNT, ID = "true or false", "a non-negative integer", "an integer or a string"
HTTP = {
    "request": {
        "binary_data_output": BOOL,
        "priority": COUNT,
        "timeout": COUNT,
        "sequence_id": ID,
        "sequence_start": BOOL,
        "sequence_end": BOOL,
    },
    "input": {"binary_data_size": COUNT},
    "output": {"binary_data": BOOL, "classification": COUNT},
}
GRPC = {
    "request": {"priority": COUNT, "timeout": COUNT, "sequence_id": ID, "sequence_start": BOOL, "sequence_end": BOOL},
    "input": {},
    "output": {"classification": COUNT},
}


def _fits(value, kind: str) -> bool:
    if kind == BOOL:
        return type(value) is bool
    if kind == COUNT:
        return type(value) is int and value >= 0
    return type(value) is str or type(value) is int  # ID


def parameter_problem(place: str, where: str, params, protocol: str = "http") -> str | None:
    """Why `params` (found at `where`, e.g. "input 'input_ids'"; place "request", "input" or "output")
    cannot be passed on, else None. HTTP: the JSON value of "parameters" (absent: None). gRPC: {name: the
    value its InferParameter holds} (engines.serving.grpc_front reads them)."""
    if params is None:
        return None
    if not isinstance(params, dict):
        return f"{where}: 'parameters' must be an object"
    allowed = (HTTP if protocol == "http" else GRPC)[place]
    for name, value in params.items():
        if name in SHARED_MEMORY:
            return f"{where}: shared memory is not offered on this port; send the data in the request"
        kind = allowed.get(name)
        if kind is None:
            offered = ", ".join(allowed) or "none"
            return f"{where}: parameter {str(name)[:40]!r} is not taken here (taken: {offered})"
        if not _fits(value, kind):
            return f"{where}: parameter {name!r} must be {kind}"
    return None
