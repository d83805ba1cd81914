"""The rewriters: verified sites -> one `roformer_trt::RoformerRotary` node per layer ("plugin",
plugins/roformer_rotary/README.md) or one ai.onnx `RotaryEmbedding` per site ("onnx", opset 23).

Each takes over the sites' output tensors, so every consumer now reads the new node; the old chains (and
the in-graph Cos/Sin work they read) are left dangling for the driver's cleanup. The `interleaved`
attribute comes from the site's layout. The tables are constants: one [P, R] sincos per distinct table for
the plugin, one cos and one sin cache [P, R/2] for RotaryEmbedding, which reads them through position_ids
[B, S] (int64), the form ONNX Runtime runs at any batch and TensorRT's IRotaryEmbeddingLayer takes
(export/passes/rotary/README.md).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from export.passes.graph_utils import static_dim
from export.passes.rotary.results import Site
from export.passes.rotary.rules import Layout
from plugins import identity

SINCOS_NAME = identity.SINCOS_INITIALIZER  # plugin: [P, Dh] = [sin | cos]
COS_CACHE_NAME, SIN_CACHE_NAME = "roformer_rotary_cos_cache", "roformer_rotary_sin_cache"  # onnx: [P, Dh/2] each
ONNX_ROTARY_INTERLEAVED = (0, 1)  # RotaryEmbedding-23: split halves or adjacent pairs


def refusal(mode: str, layout: Layout) -> str | None:
    """Why `mode` cannot rewrite a site of this layout, or None."""
    attr = identity.ATTR_INTERLEAVED
    if mode == "plugin" and layout.interleaved not in identity.INTERLEAVED_ALLOWED:
        return (
            f"layout {layout.name} needs {attr}={layout.interleaved}; the {identity.PLUGIN_OP} plugin implements "
            f"{attr} in {identity.INTERLEAVED_ALLOWED} only; use --rope onnx"
        )
    if mode == "onnx" and layout.interleaved not in ONNX_ROTARY_INTERLEAVED:
        return f"layout {layout.name} needs interleaved={layout.interleaved}; RotaryEmbedding takes 0 or 1"
    return None


def tables(table: np.ndarray, index: int = 0) -> tuple[gs.Constant, gs.Constant, gs.Constant]:
    """sincos [P, R] for the plugin; cos and sin caches [P, R/2] for RotaryEmbedding. The model's first
    table keeps the plain names; ModernBERT's second (its local theta) gets the suffix `_1`."""
    half, suffix = table.shape[1] // 2, f"_{index}" if index else ""
    return (
        gs.Constant(SINCOS_NAME + suffix, table),
        gs.Constant(COS_CACHE_NAME + suffix, np.ascontiguousarray(table[:, half:])),
        gs.Constant(SIN_CACHE_NAME + suffix, np.ascontiguousarray(table[:, :half])),
    )


def _take_output(site: Site) -> gs.Variable:
    """Detach the site's output from its Add; it keeps x's dtype and symbolic shape (value_info)."""
    y = site.add.outputs[0]
    site.add.outputs.clear()
    y.dtype, y.shape = site.x.dtype, site.x.shape
    return y


def rewrite_plugin(graph: gs.Graph, layer: list[Site], sincos: gs.Constant, index: int) -> gs.Node:
    """One RoformerRotary node for all sites of a layer; it takes over the sites' output tensors."""
    outputs = [_take_output(s) for s in layer]
    node = gs.Node(
        op=identity.PLUGIN_OP,
        name=f"{identity.PLUGIN_OP}_{index}",
        domain=identity.PLUGIN_DOMAIN,
        attrs={
            identity.ATTR_PLUGIN_VERSION: identity.PLUGIN_VERSION,
            identity.ATTR_PLUGIN_NAMESPACE: identity.PLUGIN_NAMESPACE,
            identity.ATTR_INTERLEAVED: layer[0].layout.interleaved,
            identity.ATTR_ROTARY_DIM: int(sincos.shape[1]),
            identity.ATTR_NUM_TENSORS: len(layer),
        },
        inputs=[s.x for s in layer] + [sincos],
        outputs=outputs,
    )
    graph.nodes.append(node)
    return node


def rewrite_onnx(
    graph: gs.Graph, site: Site, cos: gs.Constant, sin: gs.Constant, position_ids: gs.Variable, index: int
) -> gs.Node:
    """ai.onnx RotaryEmbedding(x, cos_cache, sin_cache, position_ids) on 4-D x, so no num_heads (ONNX and
    TensorRT read it only for a 3-D x). fp16/bf16 x is cast to fp32 around it, so the rotation is computed
    in fp32 as the contract says (and ORT has no bf16 kernel for it)."""
    y = _take_output(site)
    x = site.x
    name = f"RotaryEmbedding_{index}"
    attrs = {"interleaved": site.layout.interleaved}
    rotated, dh = 2 * int(cos.shape[1]), static_dim(x.shape)
    if dh is not None and rotated < dh:  # partial rotary; 0 (the default) means all of Dh
        attrs["rotary_embedding_dim"] = rotated
    if x.dtype != np.float32:
        x32 = gs.Variable(f"{name}_x_fp32", dtype=np.float32, shape=x.shape)
        graph.nodes.append(gs.Node("Cast", f"{name}_cast_in", {"to": onnx.TensorProto.FLOAT}, [x], [x32]))
        y32 = gs.Variable(f"{name}_y_fp32", dtype=np.float32, shape=x.shape)
        node = gs.Node("RotaryEmbedding", name, attrs, [x32, cos, sin, position_ids], [y32])
        to = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(x.dtype))
        graph.nodes += [node, gs.Node("Cast", f"{name}_cast_out", {"to": to}, [y32], [y])]
        return node
    node = gs.Node("RotaryEmbedding", name, attrs, [x, cos, sin, position_ids], [y])
    graph.nodes.append(node)
    return node


def position_ids(graph: gs.Graph, x: gs.Variable) -> gs.Variable:
    """position_ids [B, S] = arange(S) broadcast over B, from x_BHSDh's shape: ORT's RotaryEmbedding wants
    exactly [B, S] (nothing broadcasts)."""
    shape = graph.layer(op="Shape", inputs=[x], outputs=["rotary_x_shape"])[0]
    shape.dtype = np.int64
    b = graph.layer(
        op="Gather",
        inputs=[shape, gs.Constant("rotary_i0", np.array([0], np.int64))],
        outputs=["rotary_b"],
        attrs={"axis": 0},
    )[0]
    s_1d = graph.layer(
        op="Gather",
        inputs=[shape, gs.Constant("rotary_i2", np.array([2], np.int64))],
        outputs=["rotary_s"],
        attrs={"axis": 0},
    )[0]
    s = graph.layer(
        op="Squeeze", inputs=[s_1d, gs.Constant("rotary_ax0", np.array([0], np.int64))], outputs=["rotary_s_scalar"]
    )[0]
    rng = graph.layer(
        op="Range",
        inputs=[gs.Constant("rotary_zero", np.array(0, np.int64)), s, gs.Constant("rotary_one", np.array(1, np.int64))],
        outputs=["rotary_positions"],
    )[0]
    row = graph.layer(
        op="Unsqueeze",
        inputs=[rng, gs.Constant("rotary_ax0b", np.array([0], np.int64))],
        outputs=["rotary_positions_1S"],
    )[0]
    bs = graph.layer(op="Concat", inputs=[b, s_1d], outputs=["rotary_BS"], attrs={"axis": 0})[0]
    pos = graph.layer(op="Expand", inputs=[row, bs], outputs=["rotary_position_ids"])[0]
    pos.dtype, pos.shape = np.int64, [x.shape[0] if x.shape else "batch", x.shape[2] if x.shape else "sequence"]
    return pos
