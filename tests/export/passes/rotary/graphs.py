"""Small graphs for the rotary pass's unit tests.

- `site_graph(...)`: one rotary site built by hand with onnx-graphsurgeon, x_BHSDh and the sin/cos
  operands as graph inputs, with switches that break one thing at a time (a slice's start or step, the
  tensor the other product reads, operand order, the sin operand shaped like a near-miss rotation).
- `RoformerSites`: a torch module that rotates a query and a key projection of one hidden state exactly
  as HF RoFormer does (its own `apply_rotary_position_embeddings`), reading a position table we choose.
- `NeoXAttention`: GPT-NeoX/LLaMA rotate_half over split halves, which the default rules decline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch

END = np.iinfo(np.int64).max


def _slice(g: gs.Graph, t, start: int, step: int, axis: int = -1, end: int = END):
    return g.layer(
        op="Slice",
        inputs=[t, np.array([start]), np.array([end]), np.array([axis]), np.array([step])],
        outputs=["slice"],
    )[0]


def interleaved_rotation(
    g: gs.Graph, x, even_x=None, odd_start: int = 1, step: int = 2, concat_axis: int = -1, unsqueeze_axis: int = -1
):
    """torch.stack([-x[..., odd_start::step], even_x[..., ::step]], dim=-1).reshape_as(x)"""
    odd = _slice(g, x, odd_start, step)
    even = _slice(g, x if even_x is None else even_x, 0, step)
    neg = g.layer(op="Neg", inputs=[odd], outputs=["neg"])[0]
    u_neg = g.layer(op="Unsqueeze", inputs=[neg, np.array([unsqueeze_axis])], outputs=["u_neg"])[0]
    u_even = g.layer(op="Unsqueeze", inputs=[even, np.array([unsqueeze_axis])], outputs=["u_even"])[0]
    cat = g.layer(op="Concat", inputs=[u_neg, u_even], outputs=["stack"], attrs={"axis": concat_axis})[0]
    shape = g.layer(op="Shape", inputs=[x], outputs=["x_shape"])[0]
    return g.layer(op="Reshape", inputs=[cat, shape], outputs=["rotate_half"])[0]


def site_graph(
    *,
    odd_start: int = 1,
    step: int = 2,
    concat_axis: int = -1,
    unsqueeze_axis: int = -1,
    other_x: bool = False,
    swap_add: bool = False,
    swap_rot_mul: bool = False,
    swap_x_mul: bool = False,
    near_miss_cos: bool = False,
    dh: int = 8,
) -> tuple[gs.Graph, gs.Node]:
    """x * cos_pos + rotate_half(x) * sin_pos. Returns the graph and its final Add.
    other_x: the cos product reads another tensor than the rotation; near_miss_cos: cos_pos is itself
    an interleaved rotation with step 3 (a near miss the matcher meets before the real rotation)."""
    x = gs.Variable("x", np.float32, ["B", 2, "S", dh])
    x2 = gs.Variable("x2", np.float32, ["B", 2, "S", dh])
    sin = gs.Variable("sin_pos", np.float32, [1, 1, "S", dh])
    cos = gs.Variable("cos_pos", np.float32, [1, 1, "S", dh])
    g = gs.Graph(inputs=[x, x2, sin, cos], opset=17)
    rot = interleaved_rotation(
        g, x, odd_start=odd_start, step=step, concat_axis=concat_axis, unsqueeze_axis=unsqueeze_axis
    )
    if near_miss_cos:
        cos = interleaved_rotation(g, cos, step=3)
    x_operands = [x2 if other_x else x, cos]
    rot_operands = [rot, sin]
    mul_x = g.layer(op="Mul", inputs=x_operands[::-1] if swap_x_mul else x_operands, outputs=["x_cos"])[0]
    mul_r = g.layer(op="Mul", inputs=rot_operands[::-1] if swap_rot_mul else rot_operands, outputs=["rh_sin"])[0]
    y = gs.Variable("y", np.float32, ["B", 2, "S", dh])
    add = gs.Node("Add", "site_add", inputs=[mul_r, mul_x] if swap_add else [mul_x, mul_r], outputs=[y])
    g.nodes.append(add)
    g.outputs = [y]
    return g, add


class RoformerSites(torch.nn.Module):
    """h [B, S, H*Dh] -> rotated query and key [B, H, S, Dh], HF RoFormer's own rotary code and our table."""

    def __init__(self, table: np.ndarray, heads: int = 2):
        super().__init__()
        rows, self.dh = table.shape
        self.heads = heads
        self.q = torch.nn.Linear(heads * self.dh, heads * self.dh)
        self.k = torch.nn.Linear(heads * self.dh, heads * self.dh)
        self.register_buffer("table", torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32)))

    def forward(self, h):
        from transformers.models.roformer.modeling_roformer import RoFormerSelfAttention

        b, s, _ = h.shape
        q = self.q(h).view(b, s, self.heads, self.dh).transpose(1, 2)
        k = self.k(h).view(b, s, self.heads, self.dh).transpose(1, 2)
        sinusoidal_pos = self.table[:s][None, None, :, :]  # [1, 1, S, Dh]
        return RoFormerSelfAttention.apply_rotary_position_embeddings(sinusoidal_pos, q, k)


class NeoXAttention(torch.nn.Module):
    """GPT-NeoX/LLaMA rotate_half: split halves, not interleaved pairs. Must not be taken for RoFormer."""

    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(16, 16)

    def forward(self, h):
        b, s, _ = h.shape
        x = self.q(h).view(b, s, 2, 8).transpose(1, 2)
        ang = torch.arange(s, dtype=torch.float32)[:, None] * 10000 ** (-torch.arange(4) / 4.0)
        cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
        x1, x2 = x[..., :4], x[..., 4:]
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def export_module(module: torch.nn.Module, path: Path, hidden: int, outputs: list[str]) -> onnx.ModelProto:
    """TorchScript export (opset 17) with dynamic batch and sequence; returns the loaded model."""
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            (torch.randn(1, 5, hidden),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["h"],
            output_names=outputs,
            dynamic_axes={"h": {0: "batch", 1: "sequence"}},
        )
    return onnx.load(str(path))
