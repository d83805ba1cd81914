"""Explicit quantization (Q/DQ) of the TensorRT-bound graph: `--precision int8 | fp8`.

    placement = plan(src)                                        # placement.py: where Q/DQ go (rules + sources)
    amax = calibrate(src, placement, calib_set, method)          # calibrate.py: ranges measured in ORT, one thread
    model, summary = build(src, placement, amax, "int8", "fp16")  # qdq.py on export.passes.precision's fp16 graph
    check_quantized(model, placement)                            # placement.py: nothing more, nothing less

In: the fp32 graph after the rotary pass, on disk (its weights stay in the external data file; only the weights
being quantized are read, one at a time). Out: the quantized ModelProto in memory (new weights held by the
proto, the others still referencing the source's data file) and what was done, for the report. Q/DQ go in after
the rotary pass: quantizing first would put Q/DQ inside the rotary sites and the pass would find none.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import numpy_helper

from export.onnx_io import load_tensor
from export.passes.precision import convert_precision
from export.passes.quantize.calibrate import CalibMethod, calibration_session, collect_amax
from export.passes.quantize.data import CalibSet
from export.passes.quantize.placement import Placement, check_quantized, load_structure, plan_placement
from export.passes.quantize.qdq import QdqSummary, insert_qdq

__all__ = ["plan", "calibrate", "build", "check_quantized", "Placement"]


def plan(src: Path, residual: bool = False) -> Placement:
    return plan_placement(load_structure(src), residual=residual)


def calibrate(
    src: Path,
    placement: Placement,
    calib: CalibSet,
    method: CalibMethod,
    *,
    rotary_function: bool,
    choices: int | None = None,
) -> dict[str, float]:
    """{fp32 tensor: amax} for every activation of the placement (kept-high nodes included: the fallback may
    quantize them again)."""
    tensors = placement.activations()
    session = calibration_session(Path(src), tensors, rotary_function)
    return collect_amax(session, tensors, calib.batches(choices), method)


def build(
    src: Path, placement: Placement, amax: dict[str, float], fmt: str, high: str
) -> tuple[onnx.ModelProto, QdqSummary]:
    """The quantized graph in memory: `high` precision (fp16: export.passes.precision's rules) for what is not
    quantized, Q/DQ of `fmt` at every active site."""
    src = Path(src)
    model = load_structure(src)
    weights = {
        s.tensor: _copy(t)
        for t in model.graph.initializer
        for s in placement.sites
        if s.kind == "weight" and s.tensor == t.name
    }
    if high == "fp16":
        model, _ = convert_precision(model, "fp16", inplace=True, base_dir=src.parent)

    def weight(name: str):
        return numpy_helper.to_array(load_tensor(weights[name], src.parent))

    summary = insert_qdq(model, placement, amax, fmt, weight)
    return model, summary


def _copy(t: onnx.TensorProto) -> onnx.TensorProto:
    out = onnx.TensorProto()
    out.CopyFrom(t)
    return out
