"""Rotary site layouts as rule objects, and the registry the pass iterates.

A site is one rotated tensor. Two frames:
- decomposed: HF's `x * cos_pos + rotate_half(x) * sin_pos` with x_BHSDh = [B, H, S, Dh] (`site_frame`: an
  Add of two Muls, in either order, the rotated operand on one side and x itself on the other); a rule
  gives `rotation`, how rotate_half(x) is written, as a pattern over the rotated operand that binds "x";
- fused: one node that already is the rotation (the `ai.onnx RotaryEmbedding` the dynamo exporter writes
  at opset 23); a rule gives `node`, the pattern of that node, binding "x" and "add" (the site's last node).
A `Layout` also holds:
- `reference`: the numpy function the site must equal, (x_BHSDh, sincos_PR) -> y_BHSDh, where sincos is
  the contract's [P, R] = [sin | cos] table (export/reference.py) and R <= Dh (the rest of x passes);
- `interleaved`: the `interleaved` attribute of the node that replaces the site (RoformerRotary and
  ai.onnx RotaryEmbedding spell it the same way): 1 adjacent pairs, 0 split halves;
- `source`: the code the pattern was read from;
- `declined`: set for a layout that is recognised but not rewritten; matching it reports this reason.
A new layout is one `Layout` added to `LAYOUTS` (in matching order) plus its tests; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from export.passes.graph_utils import const_ints, fold_ints, is_last_axis, producer, static_dim
from export.passes.rotary.pattern import ANY, Check, Op, Var
from export.reference import roformer_rotary_ref

Reference = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Layout:
    name: str
    rotation: Op | None = None  # decomposed: rotate_half(x), binds Var("x")
    reference: Reference | None = None  # None for a declined layout
    interleaved: int | None = None
    declined: str = ""
    node: Op | None = None  # fused: the node that rotates x, binds "x" and "add"
    source: str = ""

    @property
    def site(self) -> Op:
        """The whole site's pattern. Binds "x" and "add" (the node whose output is the rotated tensor)."""
        if self.node is not None:
            return self.node
        assert self.rotation is not None, f"layout {self.name} has neither a rotation nor a node pattern"
        return site_frame(self.rotation)

    @property
    def fused(self) -> bool:
        return self.node is not None


def site_frame(rotation: Op) -> Op:
    """x * cos_pos + rotation * sin_pos, each product and the sum in either operand order. The rotation is
    matched first, so it binds x and the other product must then read that very tensor."""
    x = Var("x", differs="rotate_half(x) is multiplied in, but x itself is not the other product's operand")
    return Op(
        "Add",
        Op("Mul", rotation, ANY, commutative=True),
        Op("Mul", x, ANY, commutative=True),
        commutative=True,
        name="add",
    )


def rotary_dim(site_node, x) -> int | None:
    """R of a matched site: a fused node's `rotary_embedding_dim` (0: all of Dh), else x's last dim (a
    decomposed site rotates all of its x; partial rotary slices x before the site)."""
    if site_node.op == "RotaryEmbedding" and int(site_node.attrs.get("rotary_embedding_dim", 0)) > 0:
        return int(site_node.attrs["rotary_embedding_dim"])
    return static_dim(x.shape)


# ---- conditions a pattern cannot express --------------------------------------------------------


def strided_slice(start: int) -> Check:
    """Slice(x, starts=[start], ends, axes=[last], steps=[2]) = x[..., start::2] of a 4-D x."""

    def check(sl) -> str | None:
        ins = sl.inputs
        starts = const_ints(ins[1]) if len(ins) > 1 else None
        axes = const_ints(ins[3]) if len(ins) > 3 else None
        steps = const_ints(ins[4]) if len(ins) > 4 else None
        if starts != [start] or steps != [2] or axes is None or not is_last_axis(axes[0], 4):
            return f"starts={starts} axes={axes} steps={steps}, expected x[..., {start}::2]"
        ends = const_ints(ins[2])
        if ends is None or ends[0] < 2:
            return f"ends={ends}, expected the end of the head dimension"
        return None

    return check


def unsqueeze_last(rank: int) -> Check:
    """Unsqueeze that adds the new last axis of a rank-`rank` result (axes as input, or attribute before opset 13)."""

    def check(u) -> str | None:
        axes = const_ints(u.inputs[1]) if len(u.inputs) > 1 else u.attrs.get("axes")
        if axes is None or len(axes) != 1 or not is_last_axis(int(axes[0]), rank):
            return f"axes {axes}, expected the new last axis"
        return None

    return check


def concat_last(rank: int) -> Check:
    def check(cat) -> str | None:
        axis = cat.attrs.get("axis")
        return None if is_last_axis(axis, rank) else f"axis {axis}, expected the last axis"

    return check


# ---- the layouts ---------------------------------------------------------------------------------

X = Var("x")

# HF RoFormer (modeling_roformer.apply_rotary_position_embeddings), adjacent pairs (x0, x1), (x2, x3), ...:
#   torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).reshape_as(x)
ROFORMER_INTERLEAVED = Layout(
    name="roformer-interleaved",
    source="transformers models/roformer/modeling_roformer.py RoFormerSelfAttention.apply_rotary_position_embeddings",
    rotation=Op(
        "Reshape",
        Op(
            "Concat",
            Op("Unsqueeze", Op("Neg", Op("Slice", X, where=strided_slice(1))), where=unsqueeze_last(5)),
            Op(
                "Unsqueeze",
                Op("Slice", Var("x", differs="even and odd slices read different tensors"), where=strided_slice(0)),
                where=unsqueeze_last(5),
            ),
            n_inputs=2,
            where=concat_last(5),
        ),
    ),
    reference=lambda x_BHSDh, sincos: roformer_rotary_ref([x_BHSDh], sincos)[0],
    interleaved=1,
)


# ---- split halves (GPT-NeoX / LLaMA / ModernBERT / GTE / jina / Nomic / ESM / EuroBERT) ------------------


def rotate_half_ref(x_BHSDh: np.ndarray, sincos: np.ndarray) -> np.ndarray:
    """HF's `x * cos + rotate_half(x) * sin` with rotate_half(x) = cat(-x[..., h:], x[..., :h]) over the
    first R = sincos.shape[1] dims (the rest pass), in float64: pairs (x[j], x[j + R/2]) turn by the angle
    of row p, column j. sincos: [P, R] = [sin | cos] with P >= S. Returns x's shape and dtype."""
    s, r = x_BHSDh.shape[2], sincos.shape[1]
    assert r % 2 == 0 and r <= x_BHSDh.shape[-1] and sincos.shape[0] >= s, (x_BHSDh.shape, sincos.shape)
    sin, cos = np.split(sincos[:s].astype(np.float64), 2, axis=-1)  # [S, R/2] each, broadcast over [B, H]
    xf = x_BHSDh.astype(np.float64)
    x1, x2 = xf[..., : r // 2], xf[..., r // 2 : r]  # [B, H, S, R/2] each
    rotated = [x1 * cos - x2 * sin, x2 * cos + x1 * sin, xf[..., r:]]
    return np.concatenate(rotated, axis=-1).astype(x_BHSDh.dtype)


def half_slice(upper: bool) -> Check:
    """Slice(x) = x[..., h:] (upper) or x[..., :h] (lower) of a 4-D x, h > 0, step 1. Starts and ends are
    constants, or shape arithmetic over x's static head size (TorchScript writes `x.shape[-1] // 2`); one
    that depends on a dynamic dim is left to the probe, which runs the site."""

    def check(sl) -> str | None:
        ins = sl.inputs
        axes = fold_ints(ins[3]) if len(ins) > 3 else None
        steps = fold_ints(ins[4]) if len(ins) > 4 else [1]
        if axes is None or len(axes) != 1 or not is_last_axis(axes[0], 4) or steps != [1]:
            return f"axes={axes} steps={steps}, expected a slice of the last axis with step 1"
        starts, ends = fold_ints(ins[1]), fold_ints(ins[2])
        if upper and starts is not None and (starts[0] <= 0 or (ends is not None and ends[0] <= starts[0])):
            return f"starts={starts} ends={ends}, expected x[..., h:] with h > 0"
        if not upper and (starts != [0] or (ends is not None and ends[0] <= 0)):
            return f"starts={starts} ends={ends}, expected x[..., :h]"
        return None

    return check


def halves_meet(cat) -> str | None:
    """rotate_half's two slices split x at one point h, and 2h is x's head size (when both are known)."""
    neg = producer(cat.inputs[0], "Neg")
    upper = producer(neg.inputs[0], "Slice") if neg is not None else None
    lower = producer(cat.inputs[1], "Slice")
    if upper is None or lower is None:
        return None  # the pattern decides the structure
    h_up, h_lo = fold_ints(upper.inputs[1]), fold_ints(lower.inputs[2])
    if h_up is not None and h_lo is not None and h_up != h_lo:
        return f"the halves are x[..., {h_up[0]}:] and x[..., :{h_lo[0]}]; rotate_half splits at one point"
    dh = static_dim(upper.inputs[0].shape)
    h = (h_up or h_lo or [0])[0]
    if dh is not None and h and 2 * h != dh:
        return f"x is split at {h}, not at half of its head size {dh}"
    return None


# HF's rotate_half (transformers models/llama/modeling_llama.py, copied into modernbert, gte, nomic_bert,
# esm, eurobert, jina_embeddings_v3): torch.cat((-x[..., h:], x[..., :h]), dim=-1) with h = Dh // 2; what
# `--exporter torchscript` and dynamo below opset 23 write.
SPLIT_HALVES = Layout(
    name="split-halves",
    rotation=Op(
        "Concat",
        Op("Neg", Op("Slice", X, where=half_slice(upper=True))),
        Op("Slice", Var("x", differs="the two halves slice different tensors"), where=half_slice(upper=False)),
        n_inputs=2,
        where=(concat_last(4), halves_meet),
    ),
    reference=rotate_half_ref,
    interleaved=0,
    source="transformers models/llama/modeling_llama.py rotate_half + apply_rotary_pos_emb",
)


def exporter_rotary_node(node) -> str | None:
    """The node onnxscript's RotaryEmbedding23 fusion writes for HF's apply_rotary_pos_emb: split halves,
    4-D x, 3-D caches [1, S, R/2] and no position_ids (the caches are then per batch row, which is why
    ONNX Runtime refuses it at batch > 1)."""
    if int(node.attrs.get("interleaved", 0)) != 0:
        return "interleaved=1 (adjacent pairs); this rule rewrites the split-halves node"
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
    if rank not in (None, 4):
        return f"x has rank {rank}; the rule takes x_BHSDh (a 3-D x with num_heads is not rewritten)"
    for t in node.inputs[1:3]:
        if t.shape is not None and len(t.shape) != 3:
            return f"{t.name} has rank {len(t.shape)}; without position_ids the caches are [B, S, R/2]"
    return None


# torch.onnx.export(dynamo=True, opset_version=23) rewrites HF's apply_rotary_pos_emb through onnxscript's
# rewrite rule RotaryEmbedding23 (onnxscript/rewriter/onnx_fusions/_rotary_embedding.py) into
# RotaryEmbedding(x, cos[1, S, R/2], sin[1, S, R/2]) with interleaved=0 and num_heads; nodes with a 4th input
# (position_ids) are not candidates: that is the form this pass writes.
ONNX_ROTARY_EMBEDDING = Layout(
    name="onnx-rotary-embedding",
    node=Op("RotaryEmbedding", X, ANY, ANY, n_inputs=3, where=exporter_rotary_node, name="add"),
    reference=rotate_half_ref,
    interleaved=0,
    source="onnxscript rewriter rule RotaryEmbedding23, as torch 2.13's dynamo exporter applies it at opset 23",
)

LAYOUTS: tuple[Layout, ...] = (ROFORMER_INTERLEAVED, SPLIT_HALVES, ONNX_ROTARY_EMBEDDING)  # the first Site wins
