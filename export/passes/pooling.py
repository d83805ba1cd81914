"""The pooling pass: `sentence_embedding` [batch, hidden] computed inside an encoder's ONNX graph.

In:  an onnx.ModelProto with input `attention_mask` [batch, sequence] and output `last_hidden_state`
     [batch, sequence, hidden] (float32, float16 or bfloat16).
Out: the same model with one more output `sentence_embedding` [batch, hidden], **float32 whatever the
     hidden state is stored in** (it is cast to fp32 first), by sentence-transformers' rules
     (export.reference.sentence_embedding_ref is the spec):
     - "mean": sum_s(h[b, s] * mask[b, s]) / max(sum_s mask[b, s], 1e-9) (Pooling's mean tokens, clamp
       included: an all-padding row gives zeros, not NaN);
     - "cls":  h[b, 0];
     - normalize: e / max(||e||_2, 1e-12) (Normalize, i.e. F.normalize(p=2, dim=1)).
     `last_hidden_state` stays an output unless `keep_hidden=False` (`export.build --outputs
     sentence_embedding`: the engine then returns only the pooled rows). The mode is written into the
     graph's metadata (POOLING_KEY, NORMALIZE_KEY), so a reader (engines.triton, engines.serving) can check
     that what it is asked for agrees with what the graph computes (`declared_pooling`).
The new nodes are named `pool/...` (NODE_PREFIX); export.passes.precision keeps them in fp32.
Where export.build runs it: after the rotary pass, before the precision pass, on the fp32 graph TensorRT
will get, which gains the output under its own file name (export/folder/layout.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.errors import UsageError
from export.onnx_io import has_external
from export.reference import MEAN_CLAMP, NORM_EPS
from export.spec import TASKS

POOLINGS = ("mean", "cls", "none")
EMBEDDING = "sentence_embedding"
HIDDEN = "last_hidden_state"
MASK = "attention_mask"
NODE_PREFIX = "pool/"  # every node and initializer this pass adds: clear of the exporter's names
POOLING_KEY = "roformer_trt.pooling"  # metadata_props: mean | cls
NORMALIZE_KEY = "roformer_trt.normalize"  # metadata_props: "1" when L2-normalised
LOW_FLOATS = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


@dataclass(frozen=True)
class Pooling:
    """What `export.build --pooling --normalize --outputs` asked for."""

    mode: str  # mean | cls
    normalize: bool = False
    keep_hidden: bool = True  # False: `--outputs sentence_embedding` drops last_hidden_state

    @property
    def outputs(self) -> tuple[str, ...]:
        """The outputs of the pooled graph, in order."""
        return (HIDDEN, EMBEDDING) if self.keep_hidden else (EMBEDDING,)

    def describe(self) -> str:
        return self.mode + (", L2-normalised" if self.normalize else "")


def parse_pooling(mode: str, normalize: bool, outputs: str | None) -> Pooling | None:
    """`--pooling`, `--normalize`, `--outputs` -> a Pooling, or None for `--pooling none` (UsageError on a
    contradiction)."""
    if mode not in POOLINGS:
        raise UsageError(f"--pooling {mode!r} is not one of {', '.join(POOLINGS)}")
    names = [n.strip() for n in outputs.split(",")] if outputs is not None else None
    if mode == "none":
        if normalize:
            raise UsageError("--normalize applies to a pooled output; add --pooling mean or --pooling cls")
        if names is not None:
            raise UsageError(
                "--outputs chooses between last_hidden_state and sentence_embedding; add --pooling "
                "mean or --pooling cls, or drop --outputs"
            )
        return None
    if names is None:
        return Pooling(mode, normalize)
    if not names or not set(names) <= {HIDDEN, EMBEDDING} or len(set(names)) != len(names) or EMBEDDING not in names:
        raise UsageError(f"--outputs {outputs!r}: give {EMBEDDING} or {HIDDEN},{EMBEDDING}")
    return Pooling(mode, normalize, keep_hidden=HIDDEN in names)


def check_task(pooling: Pooling | None, task: str) -> None:
    """Pooling means something only for a head that returns the hidden states; UsageError for the others."""
    if pooling is None or HIDDEN in TASKS[task]:
        return
    raise UsageError(
        f"--pooling {pooling.mode} pools last_hidden_state, and a {task} checkpoint "
        f"returns {', '.join(TASKS[task])}; drop --pooling for this head"
    )


def declared_pooling(model: onnx.ModelProto) -> Pooling | None:
    """The pooling a graph of ours computes (its metadata), None when it has no sentence_embedding output.
    UsageError for a sentence_embedding that no pass of ours wrote (nothing says how it was pooled)."""
    outputs = [o.name for o in model.graph.output]
    if EMBEDDING not in outputs:
        return None
    props = {p.key: p.value for p in model.metadata_props}
    if props.get(POOLING_KEY) not in ("mean", "cls"):
        raise UsageError(
            f"the graph has a {EMBEDDING!r} output but does not say how it was pooled (metadata "
            f"{POOLING_KEY}); rebuild it with python -m export.build --pooling mean|cls"
        )
    return Pooling(props[POOLING_KEY], props.get(NORMALIZE_KEY) == "1", keep_hidden=HIDDEN in outputs)


def add_sentence_embedding(
    model: onnx.ModelProto, pooling: str | Pooling, normalize: bool = False, keep_hidden: bool = True
) -> onnx.ModelProto:
    """A copy of `model` with `sentence_embedding`; `pooling` "none" returns `model` itself (an output it
    already has is kept). A graph that already has the output is returned as it is when it was pooled with
    the same mode (its own normalisation kept), else UsageError naming both."""
    if not isinstance(pooling, Pooling):
        if pooling not in POOLINGS:
            raise UsageError(f"unknown pooling {pooling!r}; pick one of {', '.join(POOLINGS)}")
        if pooling == "none":
            return model
        pooling = Pooling(pooling, normalize, keep_hidden)
    have = declared_pooling(model)
    if have is not None:
        if have.mode != pooling.mode:
            raise UsageError(
                f"the graph already computes {EMBEDDING} with {have.describe()} pooling, and "
                f"{pooling.mode} was asked for; pass --pooling {have.mode} (or none) to serve it"
            )
        return model
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
    if pooling.mode == "mean" and not any(i.name == MASK for i in g.input):
        raise UsageError(f"--pooling mean needs an {MASK!r} input")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _append_pooling(out.graph, pooling, hidden.type.tensor_type.elem_type)
    emb = helper.make_tensor_value_info(
        EMBEDDING,
        TensorProto.FLOAT,
        [dims[0].dim_param or dims[0].dim_value or "batch", dims[2].dim_value or dims[2].dim_param or "hidden"],
    )
    if not pooling.keep_hidden:
        kept = [o for o in out.graph.output if o.name != HIDDEN]
        del out.graph.output[:]
        out.graph.output.extend(kept)
    out.graph.output.append(emb)
    props = {p.key: p.value for p in out.metadata_props}
    helper.set_model_props(out, {**props, POOLING_KEY: pooling.mode, NORMALIZE_KEY: "1" if pooling.normalize else "0"})
    if not has_external(out):  # a graph read without its weights is checked where it is written (write_model)
        onnx.checker.check_model(out)
    return out


def _append_pooling(g: onnx.GraphProto, pooling: Pooling, hidden_elem: int) -> None:
    """The pooling nodes, in fp32: hidden [B, S, D] (cast from fp16/bf16 first) -> EMBEDDING [B, D]."""
    p = NODE_PREFIX
    consts = {}  # only what the nodes below read: the precision pass drops unused initializers anyway
    if pooling.mode == "cls":
        consts["first"] = np.array(0, np.int64)
    else:
        consts |= {
            "axis1": np.array([1], np.int64),
            "axis2": np.array([2], np.int64),
            "clamp": np.array(MEAN_CLAMP, np.float32),
        }
    if pooling.normalize:
        consts |= {"axis1": np.array([1], np.int64), "norm_eps": np.array(NORM_EPS, np.float32)}
    g.initializer.extend(numpy_helper.from_array(v, p + k) for k, v in consts.items())
    nodes, h = [], HIDDEN
    if hidden_elem in LOW_FLOATS:  # the pooled output is fp32 whatever the hidden state is stored in
        nodes.append(helper.make_node("Cast", [HIDDEN], [p + "hidden_BSD"], to=TensorProto.FLOAT, name=p + "upcast"))
        h = p + "hidden_BSD"
    pooled = p + "pooled_BD" if pooling.normalize else EMBEDDING
    if pooling.mode == "cls":
        nodes.append(helper.make_node("Gather", [h, p + "first"], [pooled], axis=1, name=p + "cls"))
    else:
        nodes += [
            helper.make_node("Cast", [MASK], [p + "mask_BS"], to=TensorProto.FLOAT, name=p + "mask"),
            helper.make_node("Unsqueeze", [p + "mask_BS", p + "axis2"], [p + "mask_BS1"], name=p + "unsq"),
            helper.make_node("Mul", [h, p + "mask_BS1"], [p + "masked_BSD"], name=p + "mul"),
            helper.make_node("ReduceSum", [p + "masked_BSD", p + "axis1"], [p + "sum_BD"], keepdims=0, name=p + "sum"),
            helper.make_node("ReduceSum", [p + "mask_BS", p + "axis1"], [p + "count_B1"], keepdims=1, name=p + "cnt"),
            helper.make_node("Max", [p + "count_B1", p + "clamp"], [p + "count_B1c"], name=p + "clamp"),
            helper.make_node("Div", [p + "sum_BD", p + "count_B1c"], [pooled], name=p + "div"),
        ]
    if pooling.normalize:
        nodes += [
            helper.make_node("Mul", [pooled, pooled], [p + "sq_BD"], name=p + "sq"),
            helper.make_node("ReduceSum", [p + "sq_BD", p + "axis1"], [p + "sumsq_B1"], keepdims=1, name=p + "sumsq"),
            helper.make_node("Sqrt", [p + "sumsq_B1"], [p + "norm_B1"], name=p + "norm"),
            helper.make_node("Max", [p + "norm_B1", p + "norm_eps"], [p + "norm_B1c"], name=p + "norm_clamp"),
            helper.make_node("Div", [pooled, p + "norm_B1c"], [EMBEDDING], name=p + "normalize"),
        ]
    g.node.extend(nodes)
