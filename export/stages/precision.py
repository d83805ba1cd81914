"""The precision stage of export.build: the TensorRT-bound graph -> its mixed-precision twin.

In: the fp32 graph TensorRT would get (`model.rope-plugin.onnx`, or whichever the rotary stage left),
`--precision`. Out: `<stem>.fp16.onnx` or `<stem>.bf16.onnx` (+ `<stem>.bf16-emulated.onnx`), their
artifact entries, the `precision` section (which ops run low and which stay fp32), and the graph to
validate in ONNX Runtime: the fp16 file itself, or for bf16 the emulated twin (ORT has no CPU bf16
MatMul/Add/LayerNorm), as an `OnnxFile` read when validation runs; RoformerRotary nodes get their
ONNX function attached in memory only. The `tensorrt-onnx` artifact names the file the engine stage
builds from.
"""

from __future__ import annotations

from pathlib import Path

from export.passes.precision import write_precision_variants
from export.progress import info, status
from export.report.schema import TENSORRT_ONNX_KEY, PrecisionSection, precision_key
from export.stages.result import StageResult
from export.validate import OnnxFile


def run_precision_stage(
    precision: str, src: Path, src_key: str, outputs: tuple[str, ...] | None = None
) -> StageResult[PrecisionSection]:
    """src: the fp32 TensorRT-bound file; src_key: its artifact key ("rope-plugin", "onnx", ...); outputs: the
    outputs the new graph must have (None: the task's; export.passes.pooling's with --pooling).
    The result's artifacts always hold TENSORRT_ONNX_KEY: the file the engine stage builds from."""
    section: PrecisionSection = {"precision": precision, "source": src.name}
    if precision == "fp32":
        return StageResult(section, artifacts={TENSORRT_ONNX_KEY: src.name})
    with status(f"writing the {precision} mixed-precision graph"):
        paths, plan = write_precision_variants(src, precision, src.parent, stem=src.stem)
    section |= {"ops": plan["ops"], "casts": plan["casts"]}
    artifacts = {precision_key(src_key, key): Path(path).name for key, path in paths.items()}
    artifacts[TENSORRT_ONNX_KEY] = Path(paths[precision]).name
    checked = "bf16-emulated" if precision == "bf16" else precision
    graph = OnnxFile(Path(paths[checked]), rotary_function=True, outputs=outputs)
    low = sum(v.get("low", 0) for v in plan["ops"].values())
    info(f"{precision} graph: {low} nodes in {precision}, {plan['casts']} casts, {Path(paths[precision]).name}")
    return StageResult(section, artifacts=artifacts, graphs={precision_key(src_key, checked): (graph, precision)})
