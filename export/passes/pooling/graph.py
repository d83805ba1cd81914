"""The pooling pass: `sentence_embedding` [batch, width] computed inside an encoder's ONNX graph.

In:  an onnx.ModelProto with input `attention_mask` [batch, sequence] and output `last_hidden_state`
     [batch, sequence, hidden] (float32, float16 or bfloat16), and a Pooling (export.passes.pooling.spec).
Out: the same model with one more output `sentence_embedding` [batch, width], **float32 whatever the hidden
     state is stored in** (it is cast to fp32 first), computed by sentence-transformers' rules
     (export.reference.sentence_embedding_ref is the spec; formulas in export/passes/pooling/README.md):
     each Pooling mode, concatenated; each Dense layer (MatMul, Add, activation); the first `truncate_dim`
     channels (Slice); L2 normalisation. `last_hidden_state` stays an output unless `keep_hidden=False`. The
     pipeline is written into the graph's metadata (Pooling.metadata) and its Dense weights into pool/
     initializers, so a reader (engines.triton, engines.serving) rebuilds the same Pooling (`declared_pooling`).
The new nodes are named `pool/...` (NODE_PREFIX); export.passes.precision keeps them in fp32 and the
quantization placement leaves them out. Ops: Cast, Unsqueeze, Mul, Add, Sub, Div, Max, Sqrt, ReduceSum,
ReduceMax, ReduceMin, CumSum, Shape, ConstantOfShape, Equal, Greater, Where, Concat, MatMul, Slice, Identity
and the activations (Tanh, Relu, Sigmoid, Erf): all in TensorRT's ONNX parser and ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.errors import UsageError
from export.onnx_io import has_external
from export.passes.pooling.spec import (
    EMBEDDING,
    HIDDEN,
    MASK,
    NODE_PREFIX,
    POOLINGS,
    Dense,
    Pooling,
    declared_pooling,
    dense_names,
)
from export.reference import MEAN_CLAMP, NORM_EPS

LOW_FLOATS = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
FAR = 2.0**24  # added to padded positions so a min over positions finds the first real token


def add_sentence_embedding(
    model: onnx.ModelProto, pooling: str | Pooling, normalize: bool = False, keep_hidden: bool = True
) -> onnx.ModelProto:
    """A copy of `model` with `sentence_embedding`; `pooling` "none" returns `model` itself (an output it
    already has is kept). A graph that already has the output is returned as it is when it computes what was
    asked (a mode name: the same mode, its own Dense, truncation and normalisation kept; a Pooling: the same
    pipeline), else UsageError naming both."""
    if not isinstance(pooling, Pooling):
        if pooling not in POOLINGS and "+" not in pooling:
            raise UsageError(f"unknown pooling {pooling!r}; pick one of {', '.join(POOLINGS)}")
        if pooling == "none":
            return model
        asked = Pooling(pooling, normalize, keep_hidden)
    else:
        asked = pooling
    have = declared_pooling(model) if any(o.name == EMBEDDING for o in model.graph.output) else None
    if have is not None:
        same = have.same_pipeline(asked) if isinstance(pooling, Pooling) else have.mode == asked.mode
        if not same:
            raise UsageError(
                f"the graph already computes {EMBEDDING} with {have.describe()} pooling, and "
                f"{asked.describe()} was asked for; pass --pooling {have.mode} (or none) to serve it"
            )
        return model
    return _pooled(model, asked)


def _pooled(model: onnx.ModelProto, pooling: Pooling) -> onnx.ModelProto:
    g = model.graph
    hidden = next((o for o in g.output if o.name == HIDDEN), None)
    if hidden is None:
        raise UsageError(
            f"--pooling {pooling.mode} needs a {HIDDEN!r} output, the graph has "
            f"{[o.name for o in g.output]}; use --pooling none for task heads"
        )
    dims = hidden.type.tensor_type.shape.dim  # [batch, sequence, hidden]
    if len(dims) != 3:
        raise UsageError(f"{HIDDEN} has rank {len(dims)}, expected [batch, sequence, hidden]")
    if not any(i.name == MASK for i in g.input):
        raise UsageError(f"--pooling {pooling.mode} needs an {MASK!r} input")
    width: int | str = dims[2].dim_param or "hidden"
    if dims[2].dim_value:
        pooling.check_widths(dims[2].dim_value)
        width = pooling.width(dims[2].dim_value)
    elif pooling.dense or pooling.truncate_dim is not None or len(pooling.modes) > 1:
        raise UsageError(f"{HIDDEN} declares no hidden width; the pooling pipeline needs it")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _Builder(out).build(pooling, hidden.type.tensor_type.elem_type)
    batch = dims[0].dim_param or dims[0].dim_value or "batch"
    emb = helper.make_tensor_value_info(EMBEDDING, TensorProto.FLOAT, [batch, width])
    if not pooling.keep_hidden:
        kept = [o for o in out.graph.output if o.name != HIDDEN]
        del out.graph.output[:]
        out.graph.output.extend(kept)
    out.graph.output.append(emb)
    props = {p.key: p.value for p in out.metadata_props}
    helper.set_model_props(out, {**props, **pooling.metadata()})
    if not has_external(out):  # a graph read without its weights is checked where it is written (write_model)
        onnx.checker.check_model(out)
    return out


class _Builder:
    """Appends the pool/ nodes to a graph: each intermediate value is made once, on first use."""

    def __init__(self, model: onnx.ModelProto):
        self.g = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
        self.axes_as_input = opset >= 18  # ReduceMax/ReduceMin take axes as an input from opset 18
        self.nodes: list[onnx.NodeProto] = []
        self.made: set[str] = set()

    def const(self, name: str, value) -> str:
        full = NODE_PREFIX + name
        if full not in self.made:
            self.made.add(full)
            self.g.initializer.append(numpy_helper.from_array(np.asarray(value), full))
        return full

    def op(self, op_type: str, inputs: list[str], name: str, **attrs) -> str:
        """Node `pool/<name>` whose one output is named `pool/<name>` too (made once)."""
        full = NODE_PREFIX + name
        if full not in self.made:
            self.made.add(full)
            self.nodes.append(helper.make_node(op_type, inputs, [full], name=full, **attrs))
        return full

    def reduce(self, op_type: str, x: str, name: str, keepdims: int) -> str:
        """`op_type` over axis 1 (sequence)."""
        if op_type == "ReduceSum" or self.axes_as_input:
            return self.op(op_type, [x, self.const("axis1", np.array([1], np.int64))], name, keepdims=keepdims)
        return self.op(op_type, [x], name, axes=[1], keepdims=keepdims)

    def build(self, pooling: Pooling, hidden_elem: int) -> None:
        h = HIDDEN
        if hidden_elem in LOW_FLOATS:  # the pooled output is fp32 whatever the hidden state is stored in
            h = self.op("Cast", [HIDDEN], "hidden_BSD", to=TensorProto.FLOAT)
        parts = [self.mode(m, h) for m in pooling.modes]
        x = parts[0] if len(parts) == 1 else self.op("Concat", parts, "concat_BW", axis=1)
        for i, d in enumerate(pooling.dense):
            x = self.dense(i, d, x)
        if pooling.truncate_dim is not None:  # Matryoshka: the first N channels, before the normalisation
            zero, n = (
                self.const("zero1", np.array([0], np.int64)),
                self.const("trunc", np.array([pooling.truncate_dim])),
            )
            x = self.op("Slice", [x, zero, n, self.const("axis1", np.array([1], np.int64))], "truncate_BN")
        if pooling.normalize:
            sq = self.op("Mul", [x, x], "sq_BW")
            norm = self.op("Sqrt", [self.reduce("ReduceSum", sq, "sumsq_B1", 1)], "norm_B1")
            norm = self.op("Max", [norm, self.const("norm_eps", np.array(NORM_EPS, np.float32))], "norm_B1c")
            x = self.op("Div", [x, norm], "normalized_BW")
        self.nodes.append(helper.make_node("Identity", [x], [EMBEDDING], name=NODE_PREFIX + "out"))
        self.g.node.extend(self.nodes)

    # the values the modes share, [B, S] unless named otherwise
    def mask(self) -> str:
        return self.op("Cast", [MASK], "mask_BS", to=TensorProto.FLOAT)

    def count(self) -> str:  # [B, 1] real tokens per row
        return self.reduce("ReduceSum", self.mask(), "count_B1", 1)

    def positions(self) -> str:  # 0, 1, ..., S-1 on every row
        one = numpy_helper.from_array(np.array([1.0], np.float32))  # ConstantOfShape's value: a 1-element tensor
        ones = self.op("ConstantOfShape", [self.op("Shape", [MASK], "shape")], "ones_BS", value=one)
        cum = self.op("CumSum", [ones, self.const("axis_scalar", np.array(1, np.int64))], "pos1_BS")
        return self.op("Sub", [cum, self.const("one", _f32(1.0))], "pos0_BS")

    def first(self) -> str:  # [B, 1] position of the first real token (FAR-ish for a row of padding)
        pad = self.op("Sub", [self.const("one", _f32(1.0)), self.mask()], "pad_BS")
        far = self.op("Mul", [pad, self.const("far", np.array(FAR, np.float32))], "far_BS")
        return self.reduce("ReduceMin", self.op("Add", [self.positions(), far], "shifted_BS"), "first_B1", 1)

    def mask_sum(self, weights_bs: str, h: str, name: str) -> str:  # [B, D]: sum over s of h * weights
        w3 = self.op("Unsqueeze", [weights_bs, self.const("axis2", np.array([2], np.int64))], f"{name}_w_BS1")
        return self.reduce("ReduceSum", self.op("Mul", [h, w3], f"{name}_BSD"), f"{name}_sum_BD", 0)

    def pick(self, index_b1: str, h: str, name: str, masked: bool) -> str:  # [B, D]: h at one position per row
        hot = self.op(
            "Cast",
            [self.op("Equal", [self.positions(), index_b1], f"{name}_eq_BS")],
            f"{name}_hot_BS",
            to=TensorProto.FLOAT,
        )
        if masked:
            hot = self.op("Mul", [hot, self.mask()], f"{name}_hotm_BS")
        return self.mask_sum(hot, h, name)

    def mode(self, mode: str, h: str) -> str:
        """One sentence-transformers Pooling mode, [B, D] (export.reference._pool is the rule)."""
        clamp = self.const("clamp", np.array(MEAN_CLAMP, np.float32))
        if mode in ("mean", "mean_sqrt_len_tokens"):
            denom = self.op("Max", [self.count(), clamp], "count_B1c")
            if mode == "mean_sqrt_len_tokens":
                denom = self.op("Sqrt", [denom], "sqrt_count_B1")
            return self.op("Div", [self.mask_sum(self.mask(), h, "masked"), denom], mode + "_BD")
        if mode == "cls":  # the first real token (token 0 under right padding; token 0 for a row of padding)
            has = self.op("Greater", [self.count(), self.const("zero", _f32(0.0))], "has_B1")
            first = self.op("Where", [has, self.first(), self.const("zero", _f32(0.0))], "cls_B1")
            return self.pick(first, h, "cls", masked=False)
        if mode == "lasttoken":  # the last real token: the largest position whose mask is 1
            last = self.reduce(
                "ReduceMax", self.op("Mul", [self.positions(), self.mask()], "real_pos_BS"), "last_B1", 1
            )
            return self.pick(last, h, "last", masked=True)
        if mode == "max":
            real = self.op("Greater", [self.mask(), self.const("zero", _f32(0.0))], "real_BS")
            real3 = self.op("Unsqueeze", [real, self.const("axis2", np.array([2], np.int64))], "real_BS1")
            low = self.const("neg_inf", np.array(-np.inf, np.float32))
            return self.reduce("ReduceMax", self.op("Where", [real3, h, low], "max_in_BSD"), "max_BD", 0)
        if mode == "weightedmean":  # weights 1, 2, ... from the first real token, 0 on padding
            step = self.op("Sub", [self.positions(), self.first()], "from_first_BS")
            w = self.op("Add", [step, self.const("one", _f32(1.0))], "weight_pos_BS")
            w = self.op("Mul", [w, self.mask()], "weights_BS")
            denom = self.op("Max", [self.reduce("ReduceSum", w, "weight_sum_B1", 1), clamp], "weight_sum_B1c")
            return self.op("Div", [self.mask_sum(w, h, "weighted"), denom], "weightedmean_BD")
        raise UsageError(f"pooling mode {mode!r} is not implemented")

    def dense(self, i: int, d: Dense, x: str) -> str:
        """act(x @ W.T + b): the weight stored [in, out] (dense_names)."""
        w_name, b_name = dense_names(i)
        self.g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(d.weight.T, np.float32), w_name))
        y = self.op("MatMul", [x, w_name], f"dense{i}/matmul")
        if d.bias is not None:
            self.g.initializer.append(numpy_helper.from_array(d.bias.astype(np.float32), b_name))
            y = self.op("Add", [y, b_name], f"dense{i}/add")
        return self.activation(d.activation, y, f"dense{i}/")

    def activation(self, name: str, x: str, p: str) -> str:
        if name == "identity":
            return x
        if name in ("tanh", "relu", "sigmoid"):
            return self.op({"tanh": "Tanh", "relu": "Relu", "sigmoid": "Sigmoid"}[name], [x], p + name)
        if name == "silu":
            return self.op("Mul", [x, self.op("Sigmoid", [x], p + "sigmoid")], p + "silu")
        if name == "gelu":  # torch.nn.GELU(): x * 0.5 * (1 + erf(x / sqrt(2)))
            erf = self.op("Erf", [self.op("Mul", [x, self.const("rsqrt2", _f32(0.5**0.5))], p + "scaled")], p + "erf")
            half = self.op("Mul", [x, self.const("half", _f32(0.5))], p + "half")
            return self.op("Mul", [half, self.op("Add", [erf, self.const("one", _f32(1.0))], p + "erf1")], p + "gelu")
        raise UsageError(f"Dense activation {name!r} is not implemented")


def _f32(v: float) -> np.ndarray:
    return np.array(v, np.float32)
