"""Live Triton serving of an OrtEncoder through NVIDIA PyTriton (CPU; no GPU, no TensorRT).

In:  an OrtEncoder (engines.serving.ort_model), a host (127.0.0.1 by default) and three ports.
Out: a running tritonserver (HTTP, gRPC, metrics) with one model, `<encoder.name>_onnx` by default,
     whose inputs are int64 [-1] (sequence; batch implicit) and whose outputs are the graph's.

`serve(...)` is a context manager: the server stops when the block exits.
Two facts of nvidia-pytriton 0.7.0 (measured here, Python 3.11):
- its Python backend stub needs the running interpreter's libpython: `LIBDIR` of sysconfig is put on
  LD_LIBRARY_PATH (otherwise the stub loads the system libpython and dies on `RLock._recursion_count`);
- with numpy 2.x every response comes back with empty output buffers ("output tensor shape does not
  match size of output"); pytriton declares numpy<2, so `serve` refuses numpy 2 up front.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from export.errors import UnavailableError

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_runtime() -> None:
    """Raise UnavailableError (exit 3) when pytriton cannot serve correctly in this environment."""
    try:
        import pytriton  # noqa: F401
    except ImportError as e:
        raise UnavailableError("nvidia-pytriton is not installed; pip install 'nvidia-pytriton==0.7.*' "
                               "(the roformer-trt 'serving' extra)") from e
    if int(np.__version__.split(".")[0]) >= 2:
        raise UnavailableError(f"numpy {np.__version__}: nvidia-pytriton 0.7's Python backend returns empty "
                               "outputs with numpy 2; serve from an environment of its own with numpy<2 "
                               "(python -m venv .venv-serving && .venv-serving/bin/pip install -e '.[serving]', "
                               "as .ci/run does)")


def _libpython_on_ld_path() -> None:
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    cur = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and libdir not in cur.split(":"):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{cur}" if cur else libdir  # inherited by tritonserver


def make_infer_fn(encoder):
    from pytriton.decorators import batch
    from pytriton.exceptions import PyTritonValidationError

    from engines.serving.ort_model import RequestError

    @batch
    def infer(**feeds):
        try:
            return encoder(feeds)
        except RequestError as e:  # becomes the error text of the failed request; the server keeps serving
            raise PyTritonValidationError(str(e)) from e

    return infer


@contextlib.contextmanager
def serve(encoder, host: str = "127.0.0.1", http_port: int | None = None, grpc_port: int | None = None,
          metrics_port: int | None = None, max_batch: int = 8, model_name: str | None = None,
          verbose: bool = False, log_file: Path | None = None) -> Iterator[dict]:
    """Yields {"model", "http", "grpc", "metrics", "log"} (model name, host:port strings, server log path).
    tritonserver's own log goes to `log_file` (default: a temp file), keeping stdout for results."""
    check_runtime()
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    _libpython_on_ld_path()
    ports = [p or free_port(host) for p in (http_port, grpc_port, metrics_port)]
    if log_file is None:
        log_file = Path(tempfile.mkdtemp(prefix="roformer-triton-")) / "tritonserver.log"
    cfg = TritonConfig(log_file=Path(log_file), http_address=host, grpc_address=host, http_port=ports[0], grpc_port=ports[1],
                       metrics_port=ports[2], exit_timeout_secs=5, log_verbose=1 if verbose else 0)
    name = model_name or f"{encoder.name}_onnx"
    inputs = [Tensor(name=s.name, dtype=np.dtype(s.dtype).type, shape=tuple(s.triton_dims()))
              for s in encoder.inputs]
    outputs = [Tensor(name=s.name, dtype=np.dtype(s.dtype).type, shape=tuple(s.triton_dims()))
               for s in encoder.outputs]
    with Triton(config=cfg) as triton:
        triton.bind(model_name=name, infer_func=make_infer_fn(encoder), inputs=inputs, outputs=outputs,
                    config=ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher(max_queue_delay_microseconds=100)),
                    strict=True)
        triton.run()
        urls = {"model": name, "http": f"{host}:{ports[0]}", "grpc": f"{host}:{ports[1]}",
                "metrics": f"{host}:{ports[2]}", "log": str(log_file)}
        log.info("serving %s: http %s, grpc %s; server log %s", name, urls["http"], urls["grpc"], log_file)
        yield urls
