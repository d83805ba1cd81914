"""The INT8 CPU twin: an ONNX Runtime model for CPU hosts, the graph engines.triton publishes as `<name>_onnx`
with its MatMul weights in int8.

In: the build's fp32 CPU graph (`model.rope-onnx.onnx`, else `model.onnx`; weights in its external data file).
Out: `<dst>` + `<dst>.data`: onnxruntime.quantization.quantize_dynamic (the MatMuls with constant weights: int8
per-channel weights, uint8 activations quantized per tensor at run time; the attention matmuls, LayerNorm, GELU
and Softmax stay fp32). Measured against the other variants (static Q/DQ as in the TensorRT graph, QOperator,
ORT fusions, optimization levels) by scripts/bench_quant_cpu.py: results in scripts/results/quant/quant_cpu.md.
Beside the source, every initializer the quantizer left unchanged points back at the source's data file instead
of being copied; elsewhere the twin holds all its weights.
ORT's quantizer writes its shape-inferred copy beside the source and its output in a temp folder beside `dst`:
nothing leaves the build folder.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import onnx

from export.onnx_io import is_external, load_tensor, write_model

RECIPE = "onnxruntime.quantization.quantize_dynamic: MatMul with constant weights, int8 per-channel weights"


def write_cpu_twin(src: Path, dst: Path) -> Path:
    """src: the fp32 CPU graph; dst: the twin's path (beside src). Returns dst."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=dst.parent))
    try:
        out = tmp / dst.name
        quantize_dynamic(str(src), str(out), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8, use_external_data_format=True)
        model = onnx.load(str(out))
        if dst.parent.resolve() == src.parent.resolve():  # elsewhere the twin holds all of its weights
            _share_unchanged(model, src)
        write_model(model, dst, check=True, external=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _share_unchanged(model: onnx.ModelProto, src: Path) -> None:
    """Initializers equal to the source's external ones read the source's data file again (no second copy)."""
    source = {t.name: t for t in onnx.load(str(src), load_external_data=False).graph.initializer if is_external(t)}
    for i, t in enumerate(model.graph.initializer):
        s = source.get(t.name)
        if s is None or s.data_type != t.data_type or list(s.dims) != list(t.dims):
            continue
        if load_tensor(s, src.parent).raw_data == t.raw_data:
            model.graph.initializer[i].CopyFrom(s)
