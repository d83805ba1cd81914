"""What precision a graph computes in, read from the ONNX file itself: never from its artifact key or a label.

The verdict (export.report.verdict) compares it with the precision the artifact's key names, so a report that
calls an fp32 graph "rope-plugin.int8" (and so claims int8's looser thresholds) fails.

In:  an ONNX file (its structure only: external weights are not read).
Out: `graph_precision(path)`: "fp32", "fp16", "bf16", "int8", "fp8", or a phrase saying what else it is
     ("quantized (uint8)", "mixed fp16 and bf16"); ValueError (the parser's reason) when it is not an ONNX graph.

Every node counts (the graph's, its subgraphs' and its local functions'), and every element type the file
states: initializers, Constant values, Cast targets, declared inputs, outputs and values, Q `output_dtype`.
In this order, the first that holds decides:
- quantization ops (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger, ...) whose quantized
  types (zero points, stored weights, outputs) are all int8/uint8, one at least int8: int8. The TensorRT graph
  has int8 zero points and weights; the CPU twin int8 weights and uint8 activations quantized at run time;
- quantization ops whose quantized types are all float8: fp8 (any other mix: "quantized (<types>)");
- bfloat16 tensors: bf16 (the bf16 graph stores them; its -emulated twin casts through them);
- float16 tensors: fp16 (both: "mixed fp16 and bf16");
- none of these: fp32.
A quantized graph may hold fp16 tensors as well (`--quant-high fp16`): its quantization decides.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto as T

QUANT_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearMatMul",
        "QLinearConv",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "QAttention",
        "QGemm",
        "MatMulNBits",
    }
)
INT8 = frozenset({T.INT8, T.UINT8})
FLOAT8 = frozenset({T.FLOAT8E4M3FN, T.FLOAT8E4M3FNUZ, T.FLOAT8E5M2, T.FLOAT8E5M2FNUZ})
QUANTIZED = INT8 | FLOAT8 | {T.INT4, T.UINT4, T.FLOAT4E2M1, T.INT2, T.UINT2}


def graph_precision(path: str | Path) -> str:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as e:
        raise ValueError(str(e).splitlines()[0][:100] if str(e) else type(e).__name__) from None
    if not model.graph.node:  # an empty file parses as an empty ModelProto: that is no graph at all
        raise ValueError("it holds no nodes")
    return precision_of(model)


def precision_of(model: onnx.ModelProto) -> str:
    nodes = list(_nodes(model))
    known = {t.name: t.data_type for t in model.graph.initializer} | _constant_types(nodes)
    quant = [n for n in nodes if n.op_type in QUANT_OPS]
    if quant:
        qtypes = set().union(*(_quantized_types(n, known) for n in quant))
        if qtypes and qtypes <= INT8 and T.INT8 in qtypes:
            return "int8"
        if qtypes and qtypes <= FLOAT8:
            return "fp8"
        return f"quantized ({', '.join(sorted(T.DataType.Name(t).lower() for t in qtypes)) or 'no quantized type'})"
    types = set(known.values()) | _stated_types(model, nodes)
    if {T.FLOAT16, T.BFLOAT16} <= types:
        return "mixed fp16 and bf16"
    if T.BFLOAT16 in types:
        return "bf16"
    if T.FLOAT16 in types:
        return "fp16"
    low = types & QUANTIZED
    if low:
        return f"fp32 holding {', '.join(sorted(T.DataType.Name(t).lower() for t in low))} tensors"
    return "fp32"


def _nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node: the graph's, its subgraphs' (If, Loop, Scan bodies) and its local functions'."""
    stack: list = [model.graph.node, *(f.node for f in model.functions)]
    while stack:
        for node in stack.pop():
            yield node
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append(a.g.node)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(g.node for g in a.graphs)


def _constant_types(nodes: list[onnx.NodeProto]) -> dict[str, int]:
    return {
        n.output[0]: a.t.data_type
        for n in nodes
        if n.op_type == "Constant" and n.output
        for a in n.attribute
        if a.name == "value"
    }


def _stated_types(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> set[int]:
    """Element types the file states beyond initializers and Constants: Cast targets and declared values."""
    types = {a.i for n in nodes if n.op_type == "Cast" for a in n.attribute if a.name == "to"}
    graph = model.graph
    for v in [*graph.input, *graph.output, *graph.value_info]:
        types.add(v.type.tensor_type.elem_type)
    return types


def _quantized_types(node: onnx.NodeProto, known: dict[str, int]) -> set[int]:
    """The quantized element types a quantization node reads or makes (zero points, stored weights, outputs)."""
    if node.op_type == "DynamicQuantizeLinear":
        return {T.UINT8}  # its output type is fixed by the operator
    out = {known[i] for i in node.input if i in known and known[i] in QUANTIZED}
    dtype = next((a.i for a in node.attribute if a.name == "output_dtype" and a.i), None)
    if dtype is not None:
        out.add(dtype)
    elif node.op_type == "QuantizeLinear" and (len(node.input) < 3 or not node.input[2]):
        out.add(T.UINT8)  # no zero point and no output_dtype: uint8, by the operator's definition
    return out
