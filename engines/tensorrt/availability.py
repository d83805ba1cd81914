"""Can the engine stage run here? TensorRT installed, PyTorch with a visible CUDA GPU.

Decided without importing tensorrt when it is absent (find_spec), and without CUDA init when it is.
`require_engine(status)` turns a skip into UnavailableError (exit 3) for `--require-engine`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

from export.errors import UnavailableError

INSTALL_HINT = "pip install .[tensorrt] on a GPU machine"


def engine_stage_status() -> dict:
    """{"status": "available", "tensorrt": version} or {"status": "skipped", "reason": ...}.

    Decided without importing tensorrt when it is absent (find_spec), and without CUDA init when it is.
    `require_engine(status)` turns a skip into UnavailableError (exit 3) for `--require-engine`.
    """
    if importlib.util.find_spec("tensorrt") is None:
        return {"status": "skipped", "reason": f"TensorRT is not installed ({INSTALL_HINT})"}
    try:
        import torch
    except ImportError:
        return {"status": "skipped", "reason": "PyTorch is not installed (needed for CUDA buffers)"}
    if not torch.cuda.is_available():
        return {"status": "skipped", "reason": "no CUDA GPU is visible (torch.cuda.is_available() is False)"}
    import tensorrt as trt

    return {"status": "available", "tensorrt": trt.__version__}


def require_engine(status: Mapping, flag: str | None = "--require-engine") -> None:
    """Raise UnavailableError (exit 3) when the engine stage was skipped."""
    if status.get("status") != "available":
        prefix = f"{flag}: " if flag else ""
        raise UnavailableError(f"{prefix}the TensorRT engine cannot be built here: {status.get('reason')}")


def trt_major(version: str) -> int:
    return int(version.split(".")[0])


FP8_MIN_CC = (8, 9)  # FP8 tensor cores: Ada (8.9), Hopper (9.0) and later (TensorRT's hardware support matrix)


def fp8_problem(name: str, cc: str) -> str | None:
    """Why an FP8 engine cannot be built on GPU `name` of compute capability `cc` ("major.minor"), or None."""
    major, minor = (int(x) for x in cc.split("."))
    if (major, minor) >= FP8_MIN_CC:
        return None
    need = ".".join(map(str, FP8_MIN_CC))
    return (
        f"FP8 engines need compute capability >= {need} (Ada, Hopper or newer); {name} is {cc}: build the int8 "
        "graph (--precision int8) here, or the fp8 one on such a GPU"
    )


def engine_status_for(precision: str) -> dict:
    """engine_stage_status(), and for fp8 also skipped where this GPU has no FP8 tensor cores: one answer that
    export.build (before any work, and at its engine stage) and engines.build share."""
    status = engine_stage_status()
    if status["status"] == "available" and precision == "fp8":
        problem = fp8_problem(*gpu_identity())
        if problem:
            return {"status": "skipped", "reason": problem}
    return status


def gpu_identity() -> tuple[str, str]:
    """(GPU name, "major.minor") of CUDA device 0, via torch."""
    import torch

    if not torch.cuda.is_available():
        raise UnavailableError("no CUDA GPU is visible; engines are built and run on a GPU")
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"
