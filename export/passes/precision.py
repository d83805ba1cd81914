"""Mixed-precision ONNX for strongly typed TensorRT: `--precision fp32|fp16|bf16`.

TensorRT 11 builds strongly typed networks only (10.x with the STRONGLY_TYPED flag): every tensor
has the dtype the ONNX file gives it, so the precision policy lives in the ONNX file we write.

In:  an fp32 ONNX model (plain export, or the rotary-rewritten graph with `RoformerRotary` nodes).
Out: the same graph with a per-node dtype ("low" = fp16 or bf16, or fp32) and explicit Casts:

| nodes | dtype | why |
|-------|-------|-----|
| MatMul, Gemm (and their weight initializers) | low | the FLOPs; accumulation is fp32 inside the GEMM |
| `RoformerRotary` x inputs / outputs | low | the plugin upcasts to fp32 internally; `sincos` (last input) stays fp32 |
| LayerNormalization, Softmax, ReduceMean/Sum, Pow, Sqrt, Reciprocal, Exp, Log, Sin, Cos | fp32 | reductions and range-sensitive math (covers decomposed LayerNorm too) |
| RotaryEmbedding (`--rope onnx` graphs) | fp32 | the rotation in fp32 with the fp32 sin/cos caches, as in the plugin |
| the pooling pass's nodes (`pool/...`, export.passes.pooling), its Dense MatMuls included | fp32 | `sentence_embedding` is a sum over up to max-len tokens, computed in fp32 |
| anything else with float inputs (bias Add, GELU, Reshape, Transpose, Where, ...) | low iff **all** its non-constant float inputs are low, else fp32 | |
| embedding / position tables read by Gather, mask arithmetic | fp32 | their float inputs are only constants, so the rule above keeps them fp32 |

Consequences of the last rule on the exported HF graph: the residual Add (dense output + previous
LayerNorm output) has one fp32 input, so it is fp32; the attention-mask Add (scores + fp32 mask,
whose `finfo(float32).min` would be -inf in fp16) is fp32; the unfused rotary math
(`q * cos + rotate_half(q) * sin`, with fp32 sin/cos from the position table) is fp32.
Integer inputs keep their dtype; float graph outputs are cast back to fp32.

ONNX Runtime has CPU kernels for fp16 MatMul via its InsertCastTransformer, but none for bf16
MatMul/Add/LayerNormalization, so `emulate=True` writes a twin: the same plan in fp32 with a
Cast(f32->low->f32) round trip wherever the real graph stores a low-precision value, and weights
rounded to low precision. That twin runs on any ORT and carries the storage rounding of the real graph.

Validate the outputs with export.validate.validate_graphs({"fp16": (model, "fp16"), "bf16-emulated":
(twin, "bf16")}, ...); for the rotary-plugin graph wrap the model in
export.passes.lowering.with_rotary_function first (in memory only).

Measured vs PyTorch fp32 on the tiny random-init test model (2 layers, hidden 32, 4 shapes up to
B=3 S=64 with padded rows; `pytest -s tests/export/passes/test_precision.py` prints them): scaled error
(max abs / max |ref|) fp16 <= 7.7e-6, bf16-emulated <= 7.1e-5; on its outlier stress twin 3.1e-5 and 5.9e-4
(defaults: rtol 5e-3 / 5e-2). PyTorch run wholly in fp16/bf16 is off by 3.9e-3 / 2.9e-2 in max abs on the
same inputs. Random init (std 0.02) makes the sublayers small next to the fp32 residual, so these are far
below what a 12-layer model shows: scripts/results/gate_sensitivity/ has the demo-size numbers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.errors import UsageError
from export.onnx_io import load_tensor, write_model
from export.passes.float_tensors import float_constants_to_initializers, float_value_names
from export.passes.pooling import NODE_PREFIX as POOLING_NODES
from export.reference import bf16_round
from export.report.thresholds import PRECISIONS
from plugins.identity import PLUGIN_OP

LOW_ELEM = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}

LOW_OPS = frozenset({"MatMul", "Gemm"})
FP32_OPS = frozenset(
    {
        "LayerNormalization",
        "SkipLayerNormalization",
        "SimplifiedLayerNormalization",
        "RMSNormalization",
        "Softmax",
        "LogSoftmax",
        "ReduceMean",
        "ReduceSum",
        "ReduceSumSquare",
        "ReduceL2",
        "Pow",
        "Sqrt",
        "Reciprocal",
        "Exp",
        "Log",
        "Sin",
        "Cos",
        "RotaryEmbedding",  # the `--rope onnx` graph: rotary math in fp32, as the plugin does it internally
    }
)
# Ops whose low-precision output needs no re-rounding in the emulated twin: they only move or
# select values that are already representable (or negate them, which is exact).
EXACT_OPS = frozenset(
    {
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Slice",
        "Gather",
        "GatherElements",
        "Concat",
        "Split",
        "Identity",
        "Flatten",
        "Expand",
        "Tile",
        "Neg",
        "Where",
        "Abs",
    }
)
_SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan"})
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})  # read no values: their float input is left as stored


def parse_precision(text: str) -> str:
    """`--precision` value -> one of PRECISIONS; UsageError otherwise."""
    p = text.strip().lower()
    if p not in PRECISIONS:
        raise UsageError(f"--precision {text!r} is not supported; use one of {', '.join(PRECISIONS)}")
    return p


@dataclass
class PrecisionPlan:
    """Which dtype each float-carrying node computes in. node_dtype: node index -> "low" | "fp32"."""

    precision: str
    node_dtype: dict[int, str]
    float_values: set[str]
    op_dtypes: dict[str, dict[str, int]] = field(default_factory=dict)  # op -> {"low": n, "fp32": n}

    def to_report(self) -> dict:
        return {"precision": self.precision, "ops": self.op_dtypes}


def plan_precision(model: onnx.ModelProto, precision: str) -> PrecisionPlan:
    """Assign a compute dtype to every node that reads or writes floats (rules in the module docstring).

    model: fp32 ONNX, nodes in topological order (the ONNX spec requires it), float Constants already
    moved to initializers (convert_precision does that). Does not modify the model.
    """
    if any(n.op_type in _SUBGRAPH_OPS for n in model.graph.node):
        raise UsageError("the precision pass does not handle If/Loop/Scan subgraphs; export without control flow")
    floats = float_value_names(model)
    inits = {i.name for i in model.graph.initializer}
    store: dict[str, str] = {i.name: "fp32" for i in model.graph.input if i.name in floats}
    node_dtype: dict[int, str] = {}
    ops: dict[str, Counter] = {}
    for idx, node in enumerate(model.graph.node):
        fin = [n for n in node.input if n and n in floats]
        fout = [n for n in node.output if n and n in floats]
        if (not fin and not fout) or node.op_type in SHAPE_ONLY_OPS:
            continue
        if node.op_type == "Cast":  # output dtype is its `to`; the input is read as stored
            store.update({o: "fp32" for o in fout})
            continue
        if node.name.startswith(POOLING_NODES):  # first: the pooling's Dense MatMuls stay fp32 too
            dt = "fp32"
        elif node.op_type in LOW_OPS or node.op_type == PLUGIN_OP:
            dt = "low"
        elif node.op_type in FP32_OPS:
            dt = "fp32"
        else:
            acts = [store.get(n, "fp32") for n in fin if n not in inits]
            dt = "low" if acts and all(a == "low" for a in acts) else "fp32"
        node_dtype[idx] = dt
        store.update({o: dt for o in fout})
        ops.setdefault(node.op_type, Counter())[dt] += 1
    return PrecisionPlan(precision, node_dtype, floats, {k: dict(v) for k, v in sorted(ops.items())})


def _low_initializer(init: TensorProto, precision: str, name: str, emulate: bool) -> TensorProto:
    arr = numpy_helper.to_array(init).astype(np.float32)
    if precision == "fp16":
        if emulate:
            return numpy_helper.from_array(arr.astype(np.float16).astype(np.float32), name)
        return numpy_helper.from_array(arr.astype(np.float16), name)
    rounded = bf16_round(arr)
    if emulate:
        return numpy_helper.from_array(rounded, name)
    bits = (rounded.view(np.uint32) >> 16).astype(np.uint16)  # exact: bf16_round zeroed the low half
    return helper.make_tensor(name, TensorProto.BFLOAT16, list(arr.shape), bits.tobytes(), raw=True)


@dataclass
class _Conversion:
    """One convert_precision run over `graph`, node by node in topological order: which dtype each value
    is stored in so far, the low-precision initializers and Casts made (each once), the new node list."""

    graph: onnx.GraphProto
    plan: PrecisionPlan
    emulate: bool
    store: dict[str, str]  # value name -> "low" | "fp32", as stored so far
    base_dir: str | Path | None = None  # where initializers in external data are read from, one at a time
    inits: dict[str, TensorProto] = field(default_factory=dict)
    low_inits: dict[str, str] = field(default_factory=dict)  # fp32 initializer -> its low twin's name
    casts: dict[tuple[str, str], str] = field(default_factory=dict)  # (value, needed dtype) -> cast name
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    n_cast: int = 0

    def __post_init__(self):
        self.inits = {i.name: i for i in self.graph.initializer}
        self.precision = self.plan.precision
        self.low_elem = LOW_ELEM[self.precision]

    def round_trip(self, src: str, dst: str) -> list[onnx.NodeProto]:
        mid = f"{dst}__{self.precision}"
        return [
            helper.make_node("Cast", [src], [mid], to=self.low_elem, name=f"{mid}_cast"),
            helper.make_node("Cast", [mid], [dst], to=TensorProto.FLOAT, name=f"{dst}_cast"),
        ]

    def as_dtype(self, name: str, need: str) -> str:
        """The name under which value `name` is available in dtype `need`, adding a Cast or a low
        initializer the first time it is asked for."""
        if name in self.inits:
            if need == "fp32":
                return name
            if name not in self.low_inits:
                self.low_inits[name] = f"{name}__{self.precision}"
                fp32 = load_tensor(self.inits[name], self.base_dir)
                self.graph.initializer.append(
                    _low_initializer(fp32, self.precision, self.low_inits[name], self.emulate)
                )
            return self.low_inits[name]
        have = self.store.get(name, "fp32")
        if have == need or (self.emulate and need == "fp32"):
            return name
        key = (name, need)
        if key not in self.casts:
            self.casts[key] = f"{name}__to_{self.precision if need == 'low' else 'fp32'}"
            self.n_cast += 1
            if self.emulate:
                self.nodes.extend(self.round_trip(name, self.casts[key]))
            else:
                to = self.low_elem if need == "low" else TensorProto.FLOAT
                self.nodes.append(
                    helper.make_node("Cast", [name], [self.casts[key]], to=to, name=f"{self.casts[key]}_cast")
                )
        return self.casts[key]

    def convert_node(self, idx: int, node: onnx.NodeProto) -> None:
        """Rewire `node`'s float inputs to its planned dtype (the plugin's last input, sincos, stays fp32);
        in the emulated twin, round a low node's outputs through the low dtype."""
        dt = self.plan.node_dtype.get(idx)
        fout = [o for o in node.output if o in self.plan.float_values]
        if node.op_type == "Cast":
            self.store.update({o: "fp32" for o in fout})
        if dt is None:
            self.nodes.append(node)
            return
        last = len(node.input) - 1
        for i, name in enumerate(node.input):
            if name and name in self.plan.float_values:
                need = "fp32" if (node.op_type == PLUGIN_OP and i == last) else dt
                node.input[i] = self.as_dtype(name, need)
        self.nodes.append(node)
        if self.emulate and dt == "low" and node.op_type not in EXACT_OPS:
            for j, o in enumerate(node.output):
                if o in self.plan.float_values:
                    node.output[j] = f"{o}__unrounded"
                    self.nodes.extend(self.round_trip(node.output[j], o))
        self.store.update({o: dt for o in fout})

    def cast_outputs_back(self) -> None:
        """Graph outputs are always fp32: rename a low producer's output and cast it back under the public name."""
        for vo in self.graph.output:
            if self.store.get(vo.name) != "low" or self.emulate:
                continue
            inner = f"{vo.name}__{self.precision}"
            for n in self.nodes:
                for seq in (n.input, n.output):
                    for i, name in enumerate(seq):
                        if name == vo.name:
                            seq[i] = inner
            self.nodes.append(
                helper.make_node("Cast", [inner], [vo.name], to=TensorProto.FLOAT, name=f"{vo.name}_cast")
            )
            self.n_cast += 1

    def finish(self) -> None:
        """Install the new nodes, drop stale value_info and unused initializers, type the plugin's outputs."""
        g = self.graph
        del g.node[:]
        g.node.extend(self.nodes)
        # Stale value_info would carry fp32 types for tensors that are now low: drop it.
        del g.value_info[:]
        used = {n for node in g.node for n in node.input} | {o.name for o in g.output}
        kept = [i for i in g.initializer if i.name in used]
        del g.initializer[:]
        g.initializer.extend(kept)
        if not self.emulate:
            for node in g.node:  # the custom op's outputs: typed by hand (TensorRT infers them from the plugin)
                if node.op_type == PLUGIN_OP:
                    g.value_info.extend(helper.make_tensor_value_info(o, self.low_elem, None) for o in node.output)


def convert_precision(
    model: onnx.ModelProto,
    precision: str,
    *,
    emulate: bool = False,
    inplace: bool = False,
    base_dir: str | Path | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """fp32 ONNX -> mixed-precision ONNX (emulate=False) or its fp32 emulated twin (emulate=True).

    Returns (new model, report dict: plan per op, casts inserted, initializers converted).
    precision "fp32" returns an unchanged copy. The input model is not modified unless `inplace`
    (then it is the returned model: no second copy of the weights in memory). A model loaded without
    its external data (`base_dir`: its folder) has each weight read when converted, one at a time; the
    initializers that stay fp32 keep referencing the fp32 data file.
    """
    precision = parse_precision(precision)
    if precision not in LOW_ELEM and precision != "fp32":
        raise UsageError(f"{precision} graphs are made by export.passes.quantize, not by the precision pass")
    out = model
    if not inplace:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    if precision == "fp32":
        return out, {"precision": "fp32", "casts": 0, "converted_initializers": 0}
    float_constants_to_initializers(out)
    plan = plan_precision(out, precision)
    conv = _Conversion(
        out.graph,
        plan,
        emulate,
        store={i.name: "fp32" for i in out.graph.input if i.name in plan.float_values},
        base_dir=base_dir,
    )
    for idx, node in enumerate(list(out.graph.node)):
        conv.convert_node(idx, node)
    conv.cast_outputs_back()
    conv.finish()
    report = plan.to_report() | {
        "emulated": emulate,
        "casts": conv.n_cast,
        "converted_initializers": len(conv.low_inits),
    }
    return out, report


def write_precision_variants(
    src: str | Path, precision: str, out_dir: str | Path, stem: str = "model"
) -> tuple[dict[str, str], dict]:
    """Write `<stem>.<precision>.onnx` (the file TensorRT gets) and, for bf16, `<stem>.bf16-emulated.onnx`,
    each with its new weights in `<name>.data` beside it.

    The real file is checked with onnx.checker (full_check). Returns ({artifact key: path}, the
    conversion report of the real file); keys "fp16", or "bf16" and "bf16-emulated"; ({}, {}) for fp32.
    """
    precision = parse_precision(precision)
    if precision == "fp32":
        return {}, {}
    src, out_dir = Path(src), Path(out_dir)
    # Each variant converts the structure in place and reads one fp32 weight at a time. Beside the source,
    # the weights that stay fp32 keep pointing at its data file and only the new ones are written
    # (`<name>.data`); elsewhere the graph is self-contained.
    beside = src.resolve().parent == out_dir.resolve()

    def convert(emulate: bool) -> tuple[onnx.ModelProto, dict]:
        return convert_precision(
            onnx.load(str(src), load_external_data=not beside),
            precision,
            emulate=emulate,
            inplace=True,
            base_dir=src.parent,
        )

    real, report = convert(emulate=False)
    paths = {precision: write_model(real, out_dir / f"{stem}.{precision}.onnx", check=True, external=True)}
    del real
    if precision == "bf16":
        twin, _ = convert(emulate=True)
        paths["bf16-emulated"] = write_model(twin, out_dir / f"{stem}.bf16-emulated.onnx", external=True)
    return {k: str(v) for k, v in paths.items()}, report
