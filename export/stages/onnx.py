"""The export stage of export.build: the PyTorch model -> model.onnx (+ model.onnx.data), the plain export.

In: the fp32 model (never changed: export_onnx swaps a longer table in only while it exports), its task,
the build's max_len, exporter and opset. Out: the `export` section, the `onnx` artifact and the graph to
validate.
"""

from __future__ import annotations

from pathlib import Path

from export.folder.layout import ONNX_FILE
from export.onnx_export import export_onnx
from export.progress import info, status
from export.report.schema import ONNX_KEY, ExportSection
from export.stages.result import StageResult


def run_export_stage(
    model, task: str, out: Path, max_len: int, exporter: str, opset: int
) -> StageResult[ExportSection]:
    with status(f"exporting ONNX ({exporter})"):
        section = export_onnx(model, task, out / ONNX_FILE, max_len, exporter, opset)
    info(f"exported {ONNX_FILE} in {section['seconds']} s")
    return StageResult(section, artifacts={ONNX_KEY: ONNX_FILE}, graphs={ONNX_KEY: (out / ONNX_FILE, "fp32")})
