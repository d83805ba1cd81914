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
ORT's fusions run on the graph without its MatMul weights (they read the constants they match, never those), and
beside the source the fused graph reads them from the source's data file, so they are loaded once, by the
quantizer. ORT's quantizer writes its shape-inferred copy beside the fused graph, and its reloaded copy of the model
and its output in a temp folder beside `dst`: nothing leaves the build folder.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx

from export.memory import release_freed
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
    src, dst = Path(src), Path(dst)
    beside = dst.parent.resolve() == src.parent.resolve()
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=dst.parent))
    # Beside the source the fused graph reads the MatMul weights from the source's data file: never loaded here.
    fused = src.with_name(f"{tmp.name}-fused.onnx") if beside else tmp / "fused.onnx"
    try:
        _fuse(src, fused, heads, hidden)
        with _temp_files_in(tmp):
            quantize_matmuls(fused, tmp / dst.name)
        model = onnx.load(str(tmp / dst.name))
        if beside:  # elsewhere the twin holds all of its weights
            _share_unchanged(model, src)
        write_model(model, dst, check=True, external=True)
    finally:
        for f in (fused, fused.with_name(fused.name + ".data")):
            f.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _fuse(src: Path, fused: Path, heads: int, hidden: int) -> None:
    """ORT's transformer fusions on `src`, written to `fused` (with its own `.data`, and the MatMul weights read
    from src's data file when `fused` lies beside src)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_layer_norm = False  # module docstring: LayerNormalization is there already, RMSNorm stays as is
    model = without_matmul_weights(src)
    # ORT 1.32's SkipLayerNormalization fusion reads LayerNormalization's optional bias as node.input[2] (IndexError
    # without it): a graph with a bias-less LayerNormalization (ModernBERT's dynamo export) keeps its Add + norm
    options.enable_skip_layer_norm = not has_biasless_layer_norm(model.graph)
    optimizer = optimize_model(
        model,
        model_type="bert",
        num_heads=heads,
        hidden_size=hidden,
        opt_level=0,
        optimization_options=options,
    )
    if fused.parent.resolve() != src.parent.resolve():  # elsewhere a location cannot name src's data file
        for i, t in enumerate(optimizer.model.graph.initializer):
            if is_external(t):
                optimizer.model.graph.initializer[i].CopyFrom(load_tensor(t, src.parent))
    optimizer.save_model_to_file(str(fused), use_external_data_format=True)
    del optimizer
    release_freed()  # the optimizer's model object holds its graph in reference cycles


@contextmanager
def _temp_files_in(folder: Path) -> Iterator[None]:
    """quantize_dynamic saves and reloads a copy of the whole model in a tempfile.TemporaryDirectory: in `folder`
    (inside the build), not in $TMPDIR, while the block runs."""
    old = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = old


def without_matmul_weights(src: Path) -> onnx.ModelProto:
    """The graph at `src` with every initializer read except MatMul weights, which stay in the external data file.
    ORT's fusions read the constants they match (biases, LayerNorm's, the embedding tables) but never a MatMul's
    weight, and run shape inference on the whole ModelProto many times, so without those weights they hold a
    fraction of the graph (the quantize stage's peak: scripts/results/pipeline/pipeline-int8*.md), and the twin is
    the same, byte for byte (tests/export/test_build_quantize.py)."""
    model = onnx.load(str(src), load_external_data=False)
    weights = {n.input[1] for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1}
    for i, t in enumerate(model.graph.initializer):
        if is_external(t) and t.name not in weights:
            model.graph.initializer[i].CopyFrom(load_tensor(t, src.parent))
    return model


def has_biasless_layer_norm(graph: onnx.GraphProto) -> bool:
    """Whether a LayerNormalization of `graph` has no bias input (structure only)."""
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
