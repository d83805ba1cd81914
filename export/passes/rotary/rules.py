"""Rotary site layouts as rule objects, and the registry the pass iterates.

Every layout shares one frame, HF's `x * cos_pos + rotate_half(x) * sin_pos` with x_BHSDh = [B, H, S, Dh]
(`SITE_FRAME`: an Add of two Muls, in either order, the rotated operand on one side and x itself on the
other). A `Layout` says what differs:
- `rotation`: how rotate_half(x) is written, as a pattern over the rotated operand that binds "x";
- `reference`: the numpy function the site must equal, (x_BHSDh, sincos_PR) -> y_BHSDh, where sincos is
  the contract's [P, R] = [sin | cos] table (export/reference.py);
- `interleaved`: the `interleaved` attribute of the node that replaces the site (RoformerRotary and
  ai.onnx RotaryEmbedding spell it the same way);
- `declined`: set for a layout that is recognised but not rewritten; matching it reports this reason.
A new layout is one `Layout` added to `LAYOUTS` (in matching order) plus its tests; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from export.passes.graph_utils import const_ints, is_last_axis
from export.passes.rotary.pattern import ANY, Check, Op, Var
from export.reference import roformer_rotary_ref

Reference = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Layout:
    name: str
    rotation: Op  # rotate_half(x): binds Var("x")
    reference: Reference | None = None  # None for a declined layout
    interleaved: int | None = None
    declined: str = ""

    @property
    def site(self) -> Op:
        """The whole site: SITE_FRAME with this layout's rotation in it. Binds "x" and "add"."""
        return site_frame(self.rotation)


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

# GPT-NeoX / LLaMA rotate_half over split halves: torch.cat([-x[..., h:], x[..., :h]], dim=-1).
# Recognised so a model of this family is reported by name instead of as "no candidate"; not rewritten:
# the plugin implements interleaved pairs only. Rewriting it (ai.onnx RotaryEmbedding, interleaved=0)
# takes a reference and interleaved=0 here; tests/export/passes/rotary/test_rules.py does exactly that.
SPLIT_HALVES = Layout(
    name="split-halves",
    rotation=Op("Concat", Op("Neg", Op("Slice", X)), Op("Slice", X), n_inputs=2, where=concat_last(4)),
    declined="rotation is rotate_half over split halves (GPT-NeoX/LLaMA), not RoFormer's interleaved pairs; "
    "left untouched",
)

LAYOUTS: tuple[Layout, ...] = (ROFORMER_INTERLEAVED, SPLIT_HALVES)  # matching order: the first Site wins
