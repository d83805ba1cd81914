"""The precision stage of export.build: the TensorRT-bound graph -> its mixed-precision twin.

In: the fp32 graph TensorRT would get (`model.rope-plugin.onnx`, or whichever the rotary stage left),
`--precision`. Out: `<stem>.fp16.onnx` or `<stem>.bf16.onnx` (+ `<stem>.bf16-emulated.onnx`), their
artifact entries, `report["precision"]` (which ops run low and which stay fp32), and the graph to
validate in ONNX Runtime: the fp16 file itself, or for bf16 the emulated twin (ORT has no CPU bf16
MatMul/Add/LayerNorm), as an `OnnxFile` read when validation runs; RoformerRotary nodes get their
ONNX function attached in memory only.
Returns the file the engine stage builds from.
"""

from __future__ import annotations

from pathlib import Path

from export.passes.precision import write_precision_variants
from export.progress import info, status
from export.validate import OnnxFile


def run_precision_stage(precision: str, src: Path, src_key: str, report: dict, graphs: dict) -> Path:
    """src: the fp32 TensorRT-bound file; src_key: its artifact key ("rope-plugin", "onnx", ...)."""
    report["precision"] = {"precision": precision, "source": src.name}
    if precision == "fp32":
        return src
    with status(f"writing the {precision} mixed-precision graph"):
        paths, plan = write_precision_variants(src, precision, src.parent, stem=src.stem)
    report["precision"] |= {"ops": plan["ops"], "casts": plan["casts"]}
    for key, path in paths.items():
        report["artifacts"][f"{src_key}.{key}"] = Path(path).name
    checked = "bf16-emulated" if precision == "bf16" else precision
    graphs[f"{src_key}.{checked}"] = (OnnxFile(Path(paths[checked]), rotary_function=True), precision)
    low = sum(v.get("low", 0) for v in plan["ops"].values())
    info(f"{precision} graph: {low} nodes in {precision}, {plan['casts']} casts, {Path(paths[precision]).name}")
    return Path(paths[precision])
