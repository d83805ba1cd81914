"""Where Q/DQ go in a RoFormer encoder graph, and the structural check that they went nowhere else.

In: the fp32 graph after the rotary pass (`RoformerRotary` or `RotaryEmbedding` nodes), its structure only.
Out: a `Placement`: one `Site` per quantized input (node name, input index, fp32 tensor, weight or activation,
role), found before any graph is changed; `check_quantized(model, placement)` lists every way a written graph
departs from it.

The rules, with their sources:

| what | Q/DQ | source |
|------|------|--------|
| MatMul / Gemm activation inputs (QKV, attention output, FFN in and out) | per-tensor, symmetric | TensorRT "Explicit Quantization", Q/DQ placement: quantize all inputs of weighted operations (GEMM); NVIDIA's QDQBERT (`transformers/models/deprecated/qdqbert`, QuantLinear input quantizers) |
| MatMul / Gemm weights | per-channel (output channel) INT8, per-tensor FP8; stored quantized with a DequantizeLinear | TensorRT: per-channel scales only for weights ("Activations cannot be quantized per-channel", NvInfer.h IQuantizeLayer); pre-quantized weights need a DQ between them and the GEMM ("Quantized Weights") |
| both inputs of the attention matmuls (Q·Kᵀ and softmax·V) | per-tensor | QDQBERT `matmul_{q,k,v,a}_input_quantizer` |
| residual Add inputs (`residual=True` only) | per-tensor | QDQBERT `add_local_input_quantizer` / `add_residual_input_quantizer`; TensorRT fuses an Add into the GEMM before it when its inputs are quantized |
| never: inside a rotary site (inputs of RoformerRotary / RotaryEmbedding, their sin/cos tables), Softmax, LayerNormalization, GELU, the mask arithmetic, outputs of weighted ops, the pooling pass's `pool/` nodes (its Dense MatMuls too) | none | rotary math stays in the plugin's fp32; TensorRT keeps these in high precision (no Q/DQ) |

Why `residual` is off by default: in this post-LayerNorm encoder the residual stream is the LayerNorm output
itself, and per-tensor INT8 on it costs more accuracy than anything else placed here (measured in
scripts/results/quant/); TensorRT still fuses the bias and residual Adds into the GEMM epilogue in fp16.

A quantized tensor read by several quantized nodes (the LayerNorm output feeding Q, K and V) gets one
QuantizeLinear and one DequantizeLinear that all of them read; nodes kept in high precision read the tensor
itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from export.passes.pooling.spec import NODE_PREFIX as POOLING_NODES
from plugins.identity import PLUGIN_OP

LINEAR_OPS = frozenset({"MatMul", "Gemm"})
ROTARY_OPS = frozenset({PLUGIN_OP, "RotaryEmbedding"})
Q_OP, DQ_OP = "QuantizeLinear", "DequantizeLinear"
# Ops that only move values: a Q/DQ reached through them still feeds what comes after.
MOVE_OPS = frozenset({"Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Cast", "Flatten"})


@dataclass(frozen=True)
class Site:
    """One input of one node that gets Q/DQ. tensor: the fp32 graph's name (calibration reads it)."""

    node: str
    index: int
    tensor: str
    kind: str  # "weight" | "activation"
    role: str  # "linear" | "attention" | "residual"
    axis: int | None = None  # weights: the output-channel axis of the per-channel scale


@dataclass
class Placement:
    sites: list[Site] = field(default_factory=list)
    keep_high: frozenset[str] = frozenset()  # node names left unquantized (the fallback's choice)
    residual: bool = False

    def active(self) -> list[Site]:
        return [s for s in self.sites if s.node not in self.keep_high]

    def nodes(self) -> list[str]:
        """Quantizable node names, in graph order, each once."""
        return list(dict.fromkeys(s.node for s in self.sites))

    def activations(self) -> list[str]:
        """fp32 tensor names whose ranges calibration must measure, each once."""
        return list(dict.fromkeys(s.tensor for s in self.sites if s.kind == "activation"))

    def with_kept(self, keep: set[str] | frozenset[str]) -> Placement:
        return Placement(self.sites, frozenset(keep), self.residual)

    def role(self, node: str) -> str:
        return next(s.role for s in self.sites if s.node == node)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per role (linear, attention, residual): nodes quantized and nodes kept in high precision."""
        out: dict[str, dict[str, int]] = {}
        for node in self.nodes():
            row = out.setdefault(self.role(node), {"quantized": 0, "high": 0})
            row["high" if node in self.keep_high else "quantized"] += 1
        return dict(sorted(out.items()))


def plan_placement(model: onnx.ModelProto, residual: bool = False) -> Placement:
    """Every Site of the rules above in `model` (fp32, topological order; node names unique, see name_nodes)."""
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    sites: list[Site] = []
    for node in model.graph.node:
        if node.name.startswith(POOLING_NODES):  # the pooled output stays fp32, its Dense MatMuls included
            continue
        if node.op_type in LINEAR_OPS:
            sites += _linear_sites(node, inits, producers)
        elif residual and _is_residual_add(node, producers):
            sites += [Site(node.name, i, t, "activation", "residual") for i, t in enumerate(node.input)]
    return Placement(sites, frozenset(), residual)


def _linear_sites(node: onnx.NodeProto, inits: dict, producers: dict) -> list[Site]:
    weighted = any(t in inits for t in node.input[:2])
    role = "linear" if weighted else "attention"
    out = []
    for i, t in enumerate(node.input[:2]):
        if t in inits:
            out.append(Site(node.name, i, t, "weight", role, axis=_channel_axis(node, i, max(2, len(inits[t].dims)))))
        else:
            out.append(Site(node.name, i, t, "activation", role))
    return out


def _channel_axis(node: onnx.NodeProto, index: int, rank: int) -> int:
    """The axis of a weight that indexes the op's output channels (rows for a weight on the left).
    MatMul B [.., K, N] -> last; MatMul A [.., M, K] -> second to last; Gemm: the same, swapped by transA/B."""
    trans = {a.name: a.i for a in node.attribute}.get("transA" if index == 0 else "transB", 0)
    last, before = rank - 1, rank - 2
    if index == 1:
        return before if (node.op_type == "Gemm" and trans) else last
    return last if (node.op_type == "Gemm" and trans) else before


def _is_residual_add(node: onnx.NodeProto, producers: dict) -> bool:
    """Add(bias Add of a weighted op, LayerNorm output): the post-LN encoder's skip connection."""
    if node.op_type != "Add" or len(node.input) != 2:
        return False
    kinds = sorted(producers[t].op_type if t in producers else "" for t in node.input)
    return kinds == ["Add", "LayerNormalization"] and _follows_linear(node, producers)


def _follows_linear(node: onnx.NodeProto, producers: dict) -> bool:
    local = next(producers[t] for t in node.input if t in producers and producers[t].op_type == "Add")
    return any(t in producers and producers[t].op_type in LINEAR_OPS for t in local.input)


def load_structure(src) -> onnx.ModelProto:
    """The graph at `src` without its weight bytes, every node named (sites address nodes by name)."""
    model = onnx.load(str(src), load_external_data=False)
    name_nodes(model)
    return model


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name, in place: sites address nodes by name."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}__q"
        seen.add(node.name)


def check_quantized(model: onnx.ModelProto, placement: Placement) -> list[str]:
    """Every departure of `model` from `placement`: a site left without Q/DQ, a node kept high that has one,
    Q/DQ feeding anything but the nodes of the rules, or reaching a rotary node. Empty: the graph is as planned."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    problems = []
    for s in placement.sites:
        node = nodes.get(s.node)
        if node is None:
            problems.append(f"node {s.node!r} of the placement is not in the graph")
            continue
        got = producers.get(node.input[s.index])
        quantized = got is not None and got.op_type == DQ_OP and _dq_source_ok(got, producers, inits, s.kind)
        if s.node in placement.keep_high and quantized:
            problems.append(f"{s.node} input {s.index} is quantized but the fallback kept the node high")
        elif s.node not in placement.keep_high and not quantized:
            problems.append(f"{s.node} input {s.index} ({s.tensor}) has no Q/DQ")
    allowed = {(s.node, s.index) for s in placement.active()}
    for node in model.graph.node:
        if node.op_type in ROTARY_OPS:
            problems += [
                f"rotary node {node.name} reads a quantized tensor ({t})"
                for t in node.input
                if t and _reaches_dq(t, producers)
            ]
        elif node.op_type not in (Q_OP, DQ_OP):
            problems += [
                f"{node.op_type} node {node.name} input {i} reads a dequantized tensor ({t}), outside the rules"
                for i, t in enumerate(node.input)
                if t in producers and producers[t].op_type == DQ_OP and (node.name, i) not in allowed
            ]
    return problems + _qdq_pair_problems(model, producers)


def _qdq_pair_problems(model: onnx.ModelProto, producers: dict) -> list[str]:
    """A Q read by anything but a DQ (a quantized tensor computed on), a Q/DQ nobody reads, a scale that is not a
    positive finite initializer (an underflowed or NaN scale is invalid for ONNX and TensorRT alike)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for t in node.input:
            readers.setdefault(t, []).append(node)
    outputs = {o.name for o in model.graph.output}
    inits = {i.name: i for i in model.graph.initializer}
    problems = []
    for node in model.graph.node:
        if node.op_type not in (Q_OP, DQ_OP):
            continue
        users = readers.get(node.output[0], [])
        if not users and node.output[0] not in outputs:
            problems.append(f"{node.op_type} {node.name} is read by nothing")
        if node.op_type == Q_OP and any(u.op_type != DQ_OP for u in users):
            problems.append(f"QuantizeLinear {node.name} is read by a node other than DequantizeLinear")
        scale = inits.get(node.input[1]) if len(node.input) > 1 else None
        values = None if scale is None else numpy_helper.to_array(scale).astype(np.float64)
        if values is None or not (np.isfinite(values).all() and (values > 0).all()):
            problems.append(f"{node.op_type} {node.name} has no positive finite scale initializer")
    return problems


def _dq_source_ok(dq: onnx.NodeProto, producers: dict, inits: set[str], kind: str) -> bool:
    """A weight's DQ reads a quantized initializer; an activation's DQ reads a QuantizeLinear."""
    src = dq.input[0]
    if kind == "weight":
        return src in inits
    return src in producers and producers[src].op_type == Q_OP


def _reaches_dq(tensor: str, producers: dict) -> bool:
    """Does `tensor` come from a Q or DQ, possibly through ops that only move values?"""
    seen = set()
    while tensor in producers and tensor not in seen:
        seen.add(tensor)
        node = producers[tensor]
        if node.op_type in (Q_OP, DQ_OP):
            return True
        if node.op_type not in MOVE_OPS:
            return False
        tensor = node.input[0]
    return False
