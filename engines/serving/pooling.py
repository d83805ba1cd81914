"""Add a `sentence_embedding` output to an encoder's ONNX graph.

In:  an onnx.ModelProto with inputs `attention_mask` [batch, sequence] and output
     `last_hidden_state` [batch, sequence, hidden].
Out: the same model with one more output `sentence_embedding` [batch, hidden], same dtype as
     `last_hidden_state`:
     - "mean": sum_s(h[b, s] * mask[b, s]) / max(sum_s mask[b, s], 1e-9)  (sentence-transformers'
       mean pooling, including its 1e-9 clamp, so an all-padding row gives zeros, not NaN)
     - "cls":  h[b, 0]
The original outputs are untouched, so the graph still serves token-level clients.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.errors import UsageError

POOLINGS = ("mean", "cls", "none")
EMBEDDING = "sentence_embedding"
HIDDEN = "last_hidden_state"
MASK = "attention_mask"


def _find(values, name):
    return next((v for v in values if v.name == name), None)


def add_sentence_embedding(model: onnx.ModelProto, pooling: str) -> onnx.ModelProto:
    """Returns a copy of `model` with `sentence_embedding`; `pooling` "none" returns it unchanged."""
    if pooling not in POOLINGS:
        raise UsageError(f"unknown pooling {pooling!r}; pick one of {', '.join(POOLINGS)}")
    if pooling == "none":
        return model
    g = model.graph
    hidden = _find(g.output, HIDDEN)
    if hidden is None:
        names = [o.name for o in g.output]
        raise UsageError(f"--pooling {pooling} needs a {HIDDEN!r} output, the graph has {names}; "
                         "use --pooling none for task heads")
    if _find(g.output, EMBEDDING) is not None:
        raise UsageError(f"the graph already has a {EMBEDDING!r} output; use --pooling none")
    h_dims = hidden.type.tensor_type.shape.dim  # [batch, sequence, hidden]
    if len(h_dims) != 3:
        raise UsageError(f"{HIDDEN} has rank {len(h_dims)}, expected [batch, sequence, hidden]")
    elem = hidden.type.tensor_type.elem_type
    np_dtype = helper.tensor_dtype_to_np_dtype(elem)

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    p = "pool_"  # prefix keeps the new names clear of the exporter's
    nodes = []
    if pooling == "cls":
        g.initializer.append(numpy_helper.from_array(np.array(0, np.int64), p + "first"))
        nodes.append(helper.make_node("Gather", [HIDDEN, p + "first"], [EMBEDDING], axis=1, name=p + "cls"))
    else:
        if _find(g.input, MASK) is None:
            raise UsageError(f"--pooling mean needs an {MASK!r} input")
        g.initializer.extend([
            numpy_helper.from_array(np.array([1], np.int64), p + "axis1"),
            numpy_helper.from_array(np.array([2], np.int64), p + "axis2"),
            numpy_helper.from_array(np.array(1e-9, np_dtype), p + "eps"),
        ])
        nodes += [
            helper.make_node("Cast", [MASK], [p + "mask_BS"], to=elem, name=p + "cast"),
            helper.make_node("Unsqueeze", [p + "mask_BS", p + "axis2"], [p + "mask_BS1"], name=p + "unsq"),
            helper.make_node("Mul", [HIDDEN, p + "mask_BS1"], [p + "masked_BSD"], name=p + "mul"),
            helper.make_node("ReduceSum", [p + "masked_BSD", p + "axis1"], [p + "sum_BD"], keepdims=0, name=p + "sum"),
            helper.make_node("ReduceSum", [p + "mask_BS", p + "axis1"], [p + "count_B1"], keepdims=1, name=p + "cnt"),
            helper.make_node("Max", [p + "count_B1", p + "eps"], [p + "count_B1c"], name=p + "clamp"),
            helper.make_node("Div", [p + "sum_BD", p + "count_B1c"], [EMBEDDING], name=p + "div"),
        ]
    g.node.extend(nodes)
    emb = helper.make_tensor_value_info(EMBEDDING, elem, [h_dims[0].dim_param or h_dims[0].dim_value or "batch",
                                                          h_dims[2].dim_value or h_dims[2].dim_param])
    g.output.append(emb)
    onnx.checker.check_model(out)
    return out
