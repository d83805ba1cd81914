"""Insert the Q/DQ of a Placement into a graph already in its high precision (fp16 from export.passes.precision,
or fp32), with the calibrated ranges: the explicitly quantized, strongly typed graph TensorRT builds from.

In: the model (changed in place), the Placement (export.passes.quantize.placement), {fp32 tensor: amax},
the format ("int8" | "fp8"), and `weight(name)`, which returns a weight's fp32 values. Out: a QdqSummary
(scales, counts). Rules of the formats (TensorRT "Quantization Schemes"; ONNX QuantizeLinear-19):

| format | activations | weights | scale | zero point |
|--------|-------------|---------|-------|------------|
| int8 | per-tensor, amax / 127 | per-channel (output channel), max/127, values in [-127, 127] | the dtype of the tensor it scales (fp16 or fp32) | int8 0 |
| fp8 (E4M3FN) | per-tensor, amax / 448 | per-tensor, max / 448 | the same | float8e4m3fn 0 |

Per-tensor FP8 weights: TensorRT's explicit-quantization documentation does not say that per-channel scales are
accepted for FP8 (it states per-channel only for weights, and INT8's scheme); per-tensor is what it describes for
FP8, and E4M3's exponent keeps small channels representable.
Weights are stored quantized (int8 / float8e4m3fn initializers) with a DequantizeLinear in front of the GEMM, as
TensorRT's "Quantized Weights" section asks; their scales are rounded to the high precision first and the
values quantized with that rounded scale, so DQ(Q(w)) is the closest the stored pair can get to w.
FP8 Q/DQ and fp16 scales need opset 19: the graph's default opset is raised to at least 19 (`opset_raised`).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.passes.quantize.placement import DQ_OP, Q_OP, Placement, Site

QDQ_OPSET = 19  # QuantizeLinear/DequantizeLinear-19: fp16 inputs and scales, float8 types
FORMATS = {"int8": (TensorProto.INT8, 127.0), "fp8": (TensorProto.FLOAT8E4M3FN, 448.0)}
HIGH_NP: dict[int, type[np.floating]] = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


@dataclass
class QdqSummary:
    activations: dict[str, dict] = field(default_factory=dict)  # fp32 tensor -> {"amax", "scale", "dtype"}
    weights: dict[str, dict] = field(default_factory=dict)  # weight -> {"channels", "scale_min", "scale_max"}
    opset: dict[str, int] = field(default_factory=dict)  # {"source": 18, "graph": 19}

    def to_report(self) -> dict:
        return {"opset": self.opset, "activation_scales": self.activations, "weight_scales": self.weights}


def raise_opset(model: onnx.ModelProto, at_least: int = QDQ_OPSET) -> dict[str, int]:
    """Default-domain opset to >= at_least, in place; IR version >= 9. From 18 the ops of these encoders mean the
    same at 19 (19 adds types and Cast's `saturate`, which defaults to the old behaviour for non-float8 casts), so
    the number is raised. Below 18 (the TorchScript exporter's opset 17) some ops changed form at 18 (ReduceMean's
    axes became an input: a decomposed RMSNorm has one), so ONNX's own version converter rewrites the graph; it
    reads the structure only (weights in external data stay there) and keeps other domains' nodes."""
    entry = next(o for o in model.opset_import if o.domain in ("", "ai.onnx"))
    before = entry.version
    if before < 18 and before < at_least:
        from onnx import version_converter

        model.CopyFrom(version_converter.convert_version(model, at_least))
        entry = next(o for o in model.opset_import if o.domain in ("", "ai.onnx"))
    entry.version = max(entry.version, at_least)
    model.ir_version = max(model.ir_version, 9)
    return {"source": before, "graph": entry.version}


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value, by ONNX type inference on a copy without weight bytes."""
    m = onnx.ModelProto()
    m.CopyFrom(onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import))
    g = m.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    for t in model.graph.initializer:  # big tensors as data-less stubs: inference reads dtype and shape only
        g.initializer.append(TensorProto(name=t.name, data_type=t.data_type, dims=t.dims) if _nbytes(t) >= 1024 else t)
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    }
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def _nbytes(t: TensorProto) -> int:
    return len(t.raw_data) or (1024 if t.data_location == TensorProto.EXTERNAL else 0)


class Inserter:
    """Makes each Q/DQ once: one Q and one DQ per quantized tensor, one DQ per quantized weight."""

    def __init__(self, model, fmt, amax, weight):
        self.model, self.fmt, self.amax, self.weight = model, fmt, amax, weight
        self.qtype, self.qmax = FORMATS[fmt]
        self.types = elem_types(model)
        self.nodes = {n.name: n for n in model.graph.node}
        self.made: dict[str, str] = {}  # (current) tensor -> its DQ output
        self.new_nodes: list[onnx.NodeProto] = []
        self.summary = QdqSummary()

    def init(self, arr: np.ndarray, name: str) -> str:
        self.model.graph.initializer.append(numpy_helper.from_array(arr, name))
        return name

    def zero(self, name: str, shape: tuple) -> str:
        dtype = np.int8 if self.qtype == TensorProto.INT8 else ml_dtypes.float8_e4m3fn
        return self.init(np.zeros(shape, dtype=dtype), name)

    def activation(self, site: Site, tensor: str) -> str:
        """The DQ output carrying `tensor` (the site's input as the graph names it now) through Q/DQ."""
        if tensor not in self.made:
            elem = self.types.get(tensor, TensorProto.FLOAT)
            amax = self.amax[site.tensor]
            dtype = HIGH_NP.get(elem, np.float32)
            scale = np.array(amax / self.qmax, dtype=dtype)
            if not scale > 0:  # amax 0 (a constant-zero tensor) or an fp16 underflow: scale 0 is invalid in Q/DQ
                scale = np.array(np.finfo(dtype).tiny, dtype=dtype)
            s = self.init(scale, f"{tensor}__qscale")
            z = self.zero(f"{tensor}__qzero", ())
            self.new_nodes += [
                helper.make_node(Q_OP, [tensor, s, z], [f"{tensor}__q"], name=f"{tensor}__Q"),
                helper.make_node(DQ_OP, [f"{tensor}__q", s, z], [f"{tensor}__dq"], name=f"{tensor}__DQ"),
            ]
            self.made[tensor] = f"{tensor}__dq"
            self.summary.activations[site.tensor] = {
                "amax": amax,
                "scale": float(scale),
                "dtype": TensorProto.DataType.Name(elem).lower(),
            }
        return self.made[tensor]

    def weight_site(self, site: Site, elem: int) -> str:
        """The DQ output of the quantized weight of `site`, in dtype `elem` (that of the input it replaces)."""
        key = f"w:{site.tensor}"
        if key not in self.made:
            w = self.weight(site.tensor).astype(np.float32)
            q, scale = quantize_weight(w, self.fmt, site.axis, HIGH_NP.get(elem, np.float32))
            qn = f"{site.tensor}__{self.fmt}"
            self.model.graph.initializer.append(numpy_helper.from_array(q, qn))
            s = self.init(scale, f"{site.tensor}__wscale")
            z = self.zero(f"{site.tensor}__wzero", scale.shape)
            attrs: dict[str, Any] = {"axis": site.axis} if scale.ndim else {}  # the node's attributes
            self.new_nodes.append(
                helper.make_node(DQ_OP, [qn, s, z], [f"{site.tensor}__dqw"], name=f"{site.tensor}__DQw", **attrs)
            )
            self.made[key] = f"{site.tensor}__dqw"
            self.summary.weights[site.tensor] = {
                "channels": int(scale.size),
                "scale_min": float(scale.min()),
                "scale_max": float(scale.max()),
            }
        return self.made[key]

    def dq_for(self, site: Site, tensor: str) -> str:
        """The dequantized stand-in for input `tensor` of the site's node."""
        if site.kind == "weight":
            return self.weight_site(site, self.types.get(tensor, TensorProto.FLOAT))
        return self.activation(site, tensor)

    def finish(self, rank: Mapping[str, float] | None = None) -> None:
        """Add the new nodes, restore a topological order (toposort's `rank`), drop what nothing reads."""
        self.model.graph.node.extend(self.new_nodes)
        toposort(self.model.graph, rank)
        drop_unused_initializers(self.model.graph)


def quantize_weight(w: np.ndarray, fmt: str, axis: int | None, high) -> tuple[np.ndarray, np.ndarray]:
    """(quantized values, scale in the high dtype): INT8 per-channel along `axis`, FP8 per-tensor."""
    qtype, qmax = FORMATS[fmt]
    if fmt == "int8":
        other = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=other)
    else:
        amax = np.array(np.abs(w).max())
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(high)
    scale = np.where(scale > 0, scale, np.finfo(high).tiny).astype(high)  # an fp16 underflow would be 0
    shape = [1] * w.ndim
    if scale.ndim and axis is not None:  # per channel (int8 with an axis): the scale runs along it
        shape[axis] = -1
    x = w / scale.astype(np.float32).reshape(shape)
    if fmt == "int8":
        return np.clip(np.rint(x), -qmax, qmax).astype(np.int8), scale
    return np.clip(x, -qmax, qmax).astype(ml_dtypes.float8_e4m3fn), scale


def insert_qdq(
    model: onnx.ModelProto, placement: Placement, amax: dict[str, float], fmt: str, weight: Callable[[str], np.ndarray]
) -> QdqSummary:
    """Q/DQ for every active site of `placement`, in place; unused initializers dropped, nodes re-sorted."""
    opset = raise_opset(model)
    ins = Inserter(model, fmt, amax, weight)
    for site in placement.active():
        node = ins.nodes[site.node]
        node.input[site.index] = ins.dq_for(site, node.input[site.index])
    ins.finish()
    ins.summary.opset = opset
    return ins.summary


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def toposort(graph: onnx.GraphProto, rank: Mapping[str, float] | None = None) -> None:
    """Stable topological order (Kahn): of the nodes ready, the lowest rank runs first. A node's rank is its index in
    the current order, or `rank[node name]`, and never more than its readers' (a producer is pulled forward to the
    reader that needs it), so new Q/DQ land right before their readers."""
    nodes = list(graph.node)
    made_by = {o: i for i, n in enumerate(nodes) for o in n.output}
    deps = [{made_by[t] for t in n.input if t in made_by} for n in nodes]
    key = [float((rank or {}).get(n.name, i)) for i, n in enumerate(nodes)]
    if rank:
        for i in _reverse_order(deps):  # readers before producers
            for j in deps[i]:
                key[j] = min(key[j], key[i])
    readers: dict[int, list[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            readers.setdefault(j, []).append(i)
    left = [len(d) for d in deps]
    ready = [(key[i], i) for i, n in enumerate(left) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(i)
        for r in readers.get(i, []):
            left[r] -= 1
            if left[r] == 0:
                heapq.heappush(ready, (key[r], r))
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle after Q/DQ insertion")
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def _reverse_order(deps: list[set[int]]) -> list[int]:
    """The nodes, every reader before the nodes it reads (a reversed topological order of `deps`)."""
    seen: set[int] = set()
    order: list[int] = []
    for start in range(len(deps)):
        if start in seen:
            continue
        seen.add(start)
        stack = [(start, iter(sorted(deps[start])))]
        while stack:
            node, it = stack[-1]
            nxt = next((j for j in it if j not in seen), None)
            if nxt is None:
                order.append(node)
                stack.pop()
            else:
                seen.add(nxt)
                stack.append((nxt, iter(sorted(deps[nxt]))))
    return order[::-1]
