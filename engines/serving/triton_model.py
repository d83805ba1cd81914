"""The model.py Triton's Python backend runs for a roformer-trt model served through PyTriton.

Not imported by roformer-trt: engines.serving.server copies this file into PyTriton's model repository as
`<model>/<version>/model.py`, with PyTriton's own proxy model.py beside it as `pytriton_model.py`. It runs
inside the backend stub process, where only triton_python_backend_utils and those copied files exist.

It changes one thing about a failed request. PyTriton 0.7 raises it out of `execute` (pytriton/proxy/
model.py:489-492, then :499-501 as `TritonModelException(f"Model execute error: {traceback}")`):
- the raised exception sits in a local of `execute` whose frame its own traceback holds: a reference
  cycle that keeps the request's input tensors (and the backend's shared memory under them) alive until
  the stub's cyclic GC happens to run (a bare PyTriton model that only raises: +15 MB per refused 16 MB
  request, never given back; ours: +109 MiB per refused 2,000,000-token request);
- Triton turns any exception from `execute` into status INTERNAL (HTTP 500), with PyTriton's traceback
  text, file paths included, as the message.
Here the exception is caught, the cycle broken (its finished frames cleared), and each request answered
with an error response instead: INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT) and the one line
`RequestRefused: <reason>` for a request engines.serving refused, INTERNAL and the error's last line
for anything else (the full traceback stays in the server log, where PyTriton writes it).
"""

import traceback

import triton_python_backend_utils as pb_utils  # type: ignore  # only inside the backend stub

from .pytriton_model import TritonPythonModel as _PyTritonModel

REFUSED = "RequestRefused: "  # engines.serving.server.RequestRefused's text starts with its class name


def error_for(text: str):
    """(Triton error code, one-line message) for the text of a failed request's exception."""
    at = text.rfind(REFUSED)
    if at >= 0:
        return pb_utils.TritonError.INVALID_ARG, text[at:].splitlines()[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return pb_utils.TritonError.INTERNAL, (lines[-1] if lines else "model execution failed") + " (see the server log)"


class TritonPythonModel(_PyTritonModel):
    def execute(self, requests):
        try:
            return super().execute(requests)
        except Exception as e:  # answered below as an error response per request
            code, message = error_for(str(e))
            traceback.clear_frames(e.__traceback__)  # frees the requests held by PyTriton's execute frame
        return [pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))
                for _ in requests]
