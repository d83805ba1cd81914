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


class HalvesAttention(torch.nn.Module):
    """HF's rotate_half rotary on a query of `heads_q` and a key of `heads_k` heads of one hidden state, with
    switches that break one thing at a time: the split point, the axis the halves are cut on, the rotated
    width (partial rotary rotates q[..., :rotary_dim] and concatenates the rest, as HF's partial models do)
    and theta. The table is computed in the module from fp32 angles, as HF computes it."""

    def __init__(self, heads_q=4, heads_k=2, dh=8, rotary_dim=None, theta=10000.0, split_at=None, axis=-1):
        super().__init__()
        self.hq, self.hk, self.dh, self.axis = heads_q, heads_k, dh, axis
        self.r = rotary_dim or dh
        self.split_at = split_at or self.r // 2
        self.q = torch.nn.Linear(16, heads_q * dh)
        self.k = torch.nn.Linear(16, heads_k * dh)
        self.register_buffer("inv_freq", 1.0 / theta ** (torch.arange(0, self.r, 2, dtype=torch.float) / self.r))

    def rotate_half(self, x):
        h = self.split_at
        if self.axis == -1:
            return torch.cat([-x[..., h:], x[..., :h]], dim=-1)
        return torch.cat([-x[:, :, h:], x[:, :, :h]], dim=2)  # the near miss: halves of the sequence axis

    def rotate(self, x, cos, sin):
        x_rot, x_pass = x[..., : self.r], x[..., self.r :]
        y = x_rot * cos + self.rotate_half(x_rot) * sin
        return torch.cat([y, x_pass], dim=-1) if self.r < self.dh else y

    def forward(self, h):
        b, s, _ = h.shape
        ang = torch.arange(s, dtype=torch.float)[:, None] * self.inv_freq  # [S, R/2]
        emb = torch.cat([ang, ang], dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]  # [1, 1, S, R]
        q = self.q(h).view(b, s, self.hq, self.dh).transpose(1, 2)
        k = self.k(h).view(b, s, self.hk, self.dh).transpose(1, 2)
        return self.rotate(q, cos, sin), self.rotate(k, cos, sin)


def fused_rotary_graph(
    heads=(4, 2), dh=8, rotary_dim=None, theta=10000.0, interleaved=0, rank3=False, seed=0
) -> onnx.ModelProto:
    """What torch's dynamo exporter writes at opset 23, by hand: h [B, S, 16] -> per tensor MatMul, Reshape,
    Transpose -> RotaryEmbedding(x_BHSDh, cos [1, S, R/2], sin [1, S, R/2]) with interleaved and num_heads,
    the caches computed in the graph from fp32 angles. heads: the head count of each rotated tensor (query,
    key); rank3: feed x as [B, S, H*Dh] (the 3-D form of the op)."""
    from onnx import TensorProto, helper, numpy_helper

    r = rotary_dim or dh
    rng = np.random.default_rng(seed)
    inv = (1.0 / theta ** (np.arange(0, r, 2, dtype=np.float32) / np.float32(r))).astype(np.float32)
    inits = [
        numpy_helper.from_array(inv, "inv_freq"),
        numpy_helper.from_array(np.array([1], np.int64), "one_1d"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("Shape", ["h"], ["S_1d"], start=1, end=2),
        helper.make_node("Squeeze", ["S_1d", "axis0"], ["S"]),
        helper.make_node("Range", ["zero", "S", "one"], ["pos"]),
        helper.make_node("Cast", ["pos"], ["pos_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["pos_f", "axis1"], ["pos_S1"]),
        helper.make_node("Mul", ["pos_S1", "inv_freq"], ["ang"]),  # [S, R/2]
        helper.make_node("Unsqueeze", ["ang", "axis0"], ["ang_1S"]),
    ]
    outputs = []
    for i, hn in enumerate(heads):
        w = rng.standard_normal((16, hn * dh)).astype(np.float32) / 4
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.array([0, 0, hn, dh]), f"shape{i}")]
        nodes += [
            helper.make_node("MatMul", ["h", f"w{i}"], [f"proj{i}"]),
            helper.make_node("Reshape", [f"proj{i}", f"shape{i}"], [f"x{i}_BSHDh"]),
            helper.make_node("Transpose", [f"x{i}_BSHDh"], [f"x{i}"], perm=[0, 2, 1, 3]),
            helper.make_node("Cos", ["ang_1S"], [f"cos{i}"]),  # one Cos per node, as the exporter writes them
            helper.make_node("Sin", ["ang_1S"], [f"sin{i}"]),
        ]
        x = f"x{i}"
        if rank3:
            inits.append(numpy_helper.from_array(np.array([0, 0, hn * dh]), f"flat{i}"))
            nodes.append(helper.make_node("Reshape", [f"proj{i}", f"flat{i}"], [f"x{i}_BSD"]))
            x = f"x{i}_BSD"
        attrs = {"interleaved": interleaved, "num_heads": hn} | ({"rotary_embedding_dim": r} if r < dh else {})
        nodes.append(helper.make_node("RotaryEmbedding", [x, f"cos{i}", f"sin{i}"], [f"y{i}"], f"rope{i}", **attrs))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    h = helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", "sequence", 16])
    graph = helper.make_graph(nodes, "fused_rotary", [h], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
