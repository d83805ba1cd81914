"""The model.py that Triton's Python backend runs for a roformer-trt model (ONNX Runtime on the CPU).

Not imported by roformer-trt itself: engines.serving.repository copies this file to
`<repository>/<model>/1/model.py`, beside `1/model.onnx` (the build's graph with the pooling output) and
`config.pbtxt` (`backend: "python"`, parameters max_sequence_length, vocab_size, type_vocab_size,
ort_threads). It runs inside the backend stub, which must be able to import roformer-trt and
onnxruntime: engines.serving points the backend at the running environment (EXECUTION_ENV_PATH) and
starts tritonserver in the project's root. The same folder serves from your own tritonserver 2.51+ when
its Python backend runs an environment with roformer-trt installed.

Each request is judged on its own, with engines.serving.ort_model's checks: names, shapes and dtypes
before a byte is copied, then the values. A refused request gets an error response, INVALID_ARG (HTTP 400,
gRPC INVALID_ARGUMENT) with the one-line reason; the others of the dynamic batch are still answered.
Valid requests of one sequence length run as one ONNX Runtime batch. Nothing is raised out of `execute`:
an unexpected failure is answered INTERNAL with one line, its traceback goes to the server log.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # only inside the backend stub

from engines.serving.ort_model import Limits, OrtEncoder, RequestError


def _int_parameter(params: dict, key: str) -> int | None:
    value = (params.get(key) or {}).get("string_value")
    return int(value) if value else None


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config.get("parameters") or {}
        limits = Limits(
            _int_parameter(params, "max_sequence_length"),
            _int_parameter(params, "vocab_size"),
            _int_parameter(params, "type_vocab_size"),
        )
        graph = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.encoder = OrtEncoder(
            str(graph), limits, name=config["name"], threads=_int_parameter(params, "ort_threads")
        )
        self.input_names = [s.name for s in self.encoder.inputs]
        self.dtypes = {s.name: np.dtype(s.dtype) for s in self.encoder.inputs}

    def execute(self, requests):
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, dict]]] = {}
        for i, request in enumerate(requests):
            try:
                feeds = self._feeds(request)
            except RequestError as e:
                responses[i] = refused(str(e))
                continue
            groups.setdefault(feeds[self.input_names[0]].shape[1:], []).append((i, feeds))
        for members in groups.values():
            self._run(members, responses)
        return responses

    def _feeds(self, request) -> dict[str, np.ndarray]:
        """The request's inputs, judged on names, shapes and dtypes before any is read, then on values."""
        tensors = {}
        for name in self.input_names:
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is None:
                raise RequestError(f"missing input {name!r}; send {self.input_names}")
            tensors[name] = t
        # Triton has already held each dtype to config.pbtxt's, which is the graph's
        meta = {n: (tuple(t.shape()), self.dtypes[n]) for n, t in tensors.items()}
        problem = self.encoder.shape_problem(meta)
        if problem:
            raise RequestError(problem)
        feeds = {n: t.as_numpy() for n, t in tensors.items()}
        self.encoder.check_request(feeds)
        return feeds

    def _run(self, members: list[tuple[int, dict]], responses: list) -> None:
        """One ONNX Runtime run for requests of one shape; each gets its rows back."""
        try:
            batch = {n: np.concatenate([f[n] for _, f in members]) for n in self.input_names}
            outputs = self.encoder(batch)
        except RequestError as e:  # checked per request already; kept for a check that needs the whole batch
            for i, _ in members:
                responses[i] = refused(str(e))
            return
        except Exception as e:  # a bug or an ORT failure: one line to the client, the traceback to the log
            traceback.print_exc(file=sys.stderr)
            message = f"model execution failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            for i, _ in members:
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL)
                )
            return
        start = 0
        for i, feeds in members:
            rows = feeds[self.input_names[0]].shape[0]
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(n, np.ascontiguousarray(a[start : start + rows])) for n, a in outputs.items()
                ]
            )
            start += rows


def refused(reason: str):
    """An error response with status INVALID_ARG and the reason, one line."""
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(reason, pb_utils.TritonError.INVALID_ARG)
    )
