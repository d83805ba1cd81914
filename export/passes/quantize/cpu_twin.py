"""The INT8 CPU twin: an ONNX Runtime model for CPU hosts, the graph engines.triton publishes as `<name>_onnx`
with its MatMul weights in int8.

In: the build's fp32 CPU graph (`model.rope-onnx.onnx`, else `model.onnx`; weights in its external data file).
Out: `<dst>` + `<dst>.data`: ONNX Runtime's transformer fusions (onnxruntime.transformers.optimizer, Python passes
only: SkipLayerNormalization, BiasGelu, EmbedLayerNormalization; the rotary attention does not fuse; its layer-norm
pass is off: both exporters write LayerNormalization already, and it would turn a decomposed RMSNorm into
SimplifiedLayerNormalization, an ONNX Runtime op in the ONNX domain that no ONNX opset defines), then
onnxruntime.quantization.quantize_dynamic on the MatMuls with constant weights (int8 per-tensor weights, uint8
activations quantized per tensor at run time; the attention matmuls, LayerNorm, GELU and Softmax stay fp32).
Chosen by scripts/bench_quant_cpu.py (scripts/results/quant/quant_cpu.md) over static Q/DQ as in the TensorRT
graph (slower on CPU: int8 activations, and 0.78 row cosine at S=512 without the fallback), QOperator uint8,
per-channel weights (as fast, more accurate on the demo, less on the stress checkpoint than the per-tensor
anchor) and ORT's optimization levels (within noise).
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

RECIPE = (
    "onnxruntime.transformers fusions (opt_level 0), then onnxruntime.quantization.quantize_dynamic: MatMul with "
    "constant weights, int8 per-tensor weights, uint8 activations per tensor at run time"
)


def quantize_matmuls(src: Path, dst: Path, per_channel: bool = False) -> None:
    """ORT's quantize_dynamic on the MatMuls with constant weights: int8 weights (per tensor, or per output channel),
    activations quantized at run time; weights in dst's external data file."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # DefaultTensorType: ONNX shape inference cannot type the outputs of the fused com.microsoft ops; every float of
    # these fp32 graphs is float32
    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=["MatMul"],
        per_channel=per_channel,
        weight_type=QuantType.QInt8,
        use_external_data_format=True,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def write_cpu_twin(src: Path, dst: Path, heads: int, hidden: int) -> Path:
    """src: the fp32 CPU graph; dst: the twin's path (beside src); heads, hidden: the model's (for ORT's fusion
    patterns). Returns dst."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    src, dst = Path(src), Path(dst)
    options = FusionOptions("bert")
    options.enable_layer_norm = False  # module docstring: LayerNormalization is there already, RMSNorm stays as is
    # ORT 1.32's SkipLayerNormalization fusion reads LayerNormalization's optional bias as node.input[2] (IndexError
    # without it): a graph with a bias-less LayerNormalization (ModernBERT's dynamo export) keeps its Add + norm
    options.enable_skip_layer_norm = not has_biasless_layer_norm(src)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=dst.parent))
    try:
        fused, out = tmp / "fused.onnx", tmp / dst.name
        optimize_model(
            str(src), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0, optimization_options=options
        ).save_model_to_file(str(fused), use_external_data_format=True)
        quantize_matmuls(fused, out)
        model = onnx.load(str(out))
        if dst.parent.resolve() == src.parent.resolve():  # elsewhere the twin holds all of its weights
            _share_unchanged(model, src)
        write_model(model, dst, check=True, external=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def has_biasless_layer_norm(src: Path) -> bool:
    """Whether a LayerNormalization of the graph at `src` has no bias input (structure only; weights not read)."""
    graph = onnx.load(str(src), load_external_data=False).graph
    return any(n.op_type == "LayerNormalization" and (len(n.input) < 3 or not n.input[2]) for n in graph.node)


def _share_unchanged(model: onnx.ModelProto, src: Path) -> None:
    """Initializers equal to the source's external ones read the source's data file again (no second copy)."""
    source = {t.name: t for t in onnx.load(str(src), load_external_data=False).graph.initializer if is_external(t)}
    for i, t in enumerate(model.graph.initializer):
        s = source.get(t.name)
        if s is None or s.data_type != t.data_type or list(s.dims) != list(t.dims):
            continue
        if load_tensor(s, src.parent).raw_data == t.raw_data:
            model.graph.initializer[i].CopyFrom(s)
