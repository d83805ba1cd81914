"""Live Triton serving of an OrtEncoder through NVIDIA PyTriton (CPU; no GPU, no TensorRT).

In:  an OrtEncoder (engines.serving.ort_model), a host (127.0.0.1 by default) and three ports.
Out: a running tritonserver (HTTP, gRPC, metrics) with one model, `<encoder.name>_onnx` by default,
     whose inputs are int64 [-1] (sequence; batch implicit) and whose outputs are the graph's.

`serve(...)` is a context manager: the server stops when the block exits.
A refused request (bad shape, dtype, length or values: ort_model's checks, names/shapes/dtypes before any
copy) comes back as status INVALID_ARG (HTTP 400, gRPC INVALID_ARGUMENT) with the one line
`RequestRefused: <reason>`; the backend stub runs engines/serving/triton_model.py for that (see there).
Three facts of nvidia-pytriton 0.7.0 (measured here, Python 3.11):
- every exception of the infer callable becomes status INTERNAL with PyTriton's traceback text, and the
  request's tensors stay referenced in the stub until its cyclic GC runs (+109 MiB per refused
  2,000,000-token request, 916 -> 1788 MiB over 8, never given back): triton_model.py answers such
  requests with an error response instead of raising (833 -> 833 MiB; test_triton_serving);
- its Python backend stub needs the running interpreter's libpython: `LIBDIR` of sysconfig is put on
  LD_LIBRARY_PATH (otherwise the stub loads the system libpython and dies on `RLock._recursion_count`);
- with numpy 2.x every response comes back with empty output buffers ("output tensor shape does not
  match size of output"); pytriton declares numpy<2, so `serve` refuses numpy 2 up front.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from engines.serving.ort_model import RequestError
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


STUB_MODEL = Path(__file__).with_name("triton_model.py")  # the model.py the backend stub runs (see that file)


@contextlib.contextmanager
def our_stub_model() -> Iterator[None]:
    """While serving, PyTriton's Model writes engines/serving/triton_model.py as the model's model.py and its
    own proxy model.py as pytriton_model.py beside it (both ways PyTriton 0.7 ships model files: a local
    model store, pytriton/models/model.py:162-193, and files sent to the server, :144-160). PyTriton offers
    no hook for this, so the two methods are wrapped for the duration of `serve` and restored after."""
    from pytriton.models.model import Model

    generate, files = Model.generate_model, Model.get_proxy_model_files

    def generate_model(self, model_repository):
        generate(self, model_repository)
        version_dir = Path(model_repository) / self.model_name / str(self.model_version)
        os.replace(version_dir / "model.py", version_dir / "pytriton_model.py")
        shutil.copyfile(STUB_MODEL, version_dir / "model.py")

    def get_proxy_model_files(self):
        out = files(self)
        prefix = f"file:{self.model_version}/"
        out[prefix + "pytriton_model.py"] = out.pop(prefix + "model.py")
        out[prefix + "model.py"] = STUB_MODEL.read_bytes()
        return out

    Model.generate_model, Model.get_proxy_model_files = generate_model, get_proxy_model_files
    try:
        yield
    finally:
        Model.generate_model, Model.get_proxy_model_files = generate, files


class RequestRefused(Exception):
    """A request the model cannot serve. Its text reaches the backend stub as the last line of PyTriton's
    traceback text, `engines.serving.server.RequestRefused: <reason>`; triton_model.py answers the request
    with status INVALID_ARG and the line from `RequestRefused: ` on."""


def make_infer_fn(encoder):
    """The PyTriton infer callable: checks every request's names, shapes and dtypes before @batch
    concatenates them (an oversize request is refused without a byte of it being copied), then the values
    on the batch, which is bounded by then. The refusal is raised after the `except` block, so it chains
    no exception whose frames hold the batch."""
    from pytriton.decorators import batch

    @batch
    def run(**feeds):
        return encoder(feeds)

    def infer(requests):
        problem, r = None, None
        for r in requests:
            problem = encoder.shape_problem({n: (a.shape, a.dtype) for n, a in r.items()})
            if problem:
                break
        if problem is None:
            try:
                return run(requests)
            except RequestError as e:  # becomes the error text of the failed request; the server keeps serving
                problem = str(e)
        del requests, r  # the refusal's traceback frames must not hold any request's arrays (r: the last one)
        raise RequestRefused(problem)

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
    with our_stub_model(), Triton(config=cfg) as triton:
        triton.bind(model_name=name, infer_func=make_infer_fn(encoder), inputs=inputs, outputs=outputs,
                    config=ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher(max_queue_delay_microseconds=100)),
                    strict=True)
        triton.run()
        urls = {"model": name, "http": f"{host}:{ports[0]}", "grpc": f"{host}:{ports[1]}",
                "metrics": f"{host}:{ports[2]}", "log": str(log_file)}
        log.info("serving %s: http %s, grpc %s; server log %s", name, urls["http"], urls["grpc"], log_file)
        yield urls
