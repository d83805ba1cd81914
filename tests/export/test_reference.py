"""The numpy reference of the RoformerRotary contract against independent references: HF's own RoFormer code
and the paper (interleaved=1); HF's rotate_half (ModernBERT, EuroBERT with grouped-query attention, GPT-NeoX's
partial rotary) and ONNX's RotaryEmbedding in onnx.reference and ONNX Runtime (interleaved=0)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from transformers.models.eurobert import modeling_eurobert
from transformers.models.gpt_neox import modeling_gpt_neox
from transformers.models.modernbert import modeling_modernbert
from transformers.models.roformer.modeling_roformer import (
    RoFormerSelfAttention,
    RoFormerSinusoidalPositionalEmbedding,
)

from export.reference import LAYOUT_SPLIT_HALVES, bf16_round, roformer_rotary_ref, rotary_angles, sincos_table


@pytest.mark.parametrize("rows,dim", [(1, 2), (600, 64), (37, 128), (5, 32)])
def test_table_equals_hf_create_weight(rows, dim):
    hf = RoFormerSinusoidalPositionalEmbedding(rows, dim).create_weight().numpy()
    assert np.array_equal(sincos_table(rows, dim), hf)


def test_angles_follow_the_paper():
    # theta_j = 10000^(-2j/d), angle = p * theta_j: written independently of rotary_angles' own formula
    ang = rotary_angles(9, 8)
    for p in range(9):
        for j in range(4):
            assert ang[p, j] == pytest.approx(p * 10000.0 ** (-2 * j / 8), rel=1e-15)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("b,h,s,d", [(1, 1, 1, 2), (2, 3, 17, 64), (1, 5, 217, 32)])
def test_reference_matches_hf_apply_rotary(k, b, h, s, d):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((b, h, s, d)).astype(np.float32) for _ in range(k)]
    table = sincos_table(s + 3, d)
    pos = torch.from_numpy(table[:s]).double()[None, None]
    t = [torch.from_numpy(x).double() for x in xs]
    hf = RoFormerSelfAttention.apply_rotary_position_embeddings(pos, t[0], t[min(1, k - 1)], t[2] if k == 3 else None)
    hf = [hf[0]] if k == 1 else list(hf)
    ours = roformer_rotary_ref(xs, table)
    for o, r in zip(ours, hf, strict=True):
        err = np.abs(o.astype(np.float64) - r.numpy()).max()
        # fp32 math against float64: two roundings of products of magnitude <= |x|
        assert err <= 4 * np.finfo(np.float32).eps * np.abs(r.numpy()).max(), err


def test_pairs_rotate_by_the_paper_formula():
    # one pair, by hand: (x0, x1) at position p rotated by p*theta_j
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, :, 2], x[0, 0, :, 3] = 1.0, 0.5
    y = roformer_rotary_ref([x], sincos_table(4, 4))[0]
    for p in range(4):
        a = p * 10000.0 ** (-2 * 1 / 4)
        assert y[0, 0, p, 2] == pytest.approx(np.cos(a) - 0.5 * np.sin(a), abs=1e-6)
        assert y[0, 0, p, 3] == pytest.approx(0.5 * np.cos(a) + np.sin(a), abs=1e-6)
        assert y[0, 0, p, 0] == 0 and y[0, 0, p, 1] == 0


def test_partial_rotary_dim_passes_channels_through():
    x = np.random.default_rng(1).standard_normal((1, 2, 5, 8)).astype(np.float32)
    y = roformer_rotary_ref([x], sincos_table(5, 4), rotary_dim=4)[0]
    assert np.array_equal(y[..., 4:], x[..., 4:])
    assert not np.array_equal(y[..., :4], x[..., :4])


def test_fp16_output_is_fp32_math_rounded_once():
    x = np.random.default_rng(2).standard_normal((1, 1, 9, 8)).astype(np.float16)
    y = roformer_rotary_ref([x], sincos_table(9, 8))[0]
    y32 = roformer_rotary_ref([x.astype(np.float32)], sincos_table(9, 8))[0]
    assert y.dtype == np.float16 and np.array_equal(y, y32.astype(np.float16))


@pytest.mark.parametrize("bad", [dict(rotary_dim=3), dict(rotary_dim=10), dict(interleaved=2), dict(interleaved=-1)])
def test_reference_rejects_what_the_contract_rejects(bad):
    x = np.zeros((1, 1, 2, 8), np.float32)
    with pytest.raises((ValueError, NotImplementedError)):
        roformer_rotary_ref([x], sincos_table(2, 8), **bad)


@pytest.mark.parametrize(
    "shapes",
    [
        [(1, 2, 4, 8), (1, 2, 4, 6)],
        [(1, 2, 4, 8), (2, 2, 4, 8)],
        [(1, 2, 4, 8), (1, 2, 3, 8)],
        [(1, 2, 4, 8), (2, 4, 8)],
    ],
    ids=["Dh", "B", "S", "rank"],
)
def test_tensors_must_share_b_s_and_dh(shapes):
    xs = [np.zeros(s, np.float32) for s in shapes]
    with pytest.raises(ValueError, match="rank 4|share B, S and Dh"):
        roformer_rotary_ref(xs, sincos_table(4, 6), rotary_dim=6)


# ---- interleaved=0 (split halves) against references the project did not write --------------------------------


def hf_cos_sin(table: np.ndarray, s: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's [B=1, S, R] cos and sin (each half repeated: torch.cat((freqs, freqs), -1)) from the contract's table."""
    r = table.shape[1]
    sin, cos = torch.from_numpy(table[:s, : r // 2]), torch.from_numpy(table[:s, r // 2 :])
    return torch.cat([cos, cos], -1)[None].to(dtype), torch.cat([sin, sin], -1)[None].to(dtype)


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16 if a.dtype == np.float16 else np.uint32)


# EuroBERT computes in the tensors' own dtype (no fp32 upcast), so only its fp32 is the contract's math.
@pytest.mark.parametrize(
    "module,dtype",
    [(modeling_modernbert, np.float32), (modeling_modernbert, np.float16), (modeling_eurobert, np.float32)],
    ids=["modernbert-fp32", "modernbert-fp16", "eurobert-fp32"],
)
@pytest.mark.parametrize("b,h,h_kv,s,d", [(1, 1, 1, 1, 2), (2, 4, 2, 17, 64), (3, 6, 1, 33, 32)])
def test_split_halves_is_hf_rotate_half_bit_for_bit(module, dtype, b, h, h_kv, s, d):
    """HF's apply_rotary_pos_emb(q, k, cos, sin) = x * cos + rotate_half(x) * sin with K of fewer heads (EuroBERT's
    grouped-query attention), fed the contract's table. Each output element is one fp32 product pair and one sum,
    as the contract's (rotate_half's negation is exact), so fp32 must match bit for bit; ModernBERT also computes
    fp16 inputs in fp32 and rounds once (q.float() ... .to(dtype)), which is the contract's fp16 too."""
    rng = np.random.default_rng(b * 100 + h)
    q = (rng.standard_normal((b, h, s, d)) * 4).astype(dtype)
    k = (rng.standard_normal((b, h_kv, s, d)) * 4).astype(dtype)
    table = sincos_table(s + 3, d)
    cos, sin = hf_cos_sin(table, s)
    hq, hk = module.apply_rotary_pos_emb(torch.from_numpy(q), torch.from_numpy(k), cos, sin)
    ours = roformer_rotary_ref([q, k], table, interleaved=LAYOUT_SPLIT_HALVES)
    for name, got, want in (("q", hq.numpy(), ours[0]), ("k", hk.numpy(), ours[1])):
        diff = np.flatnonzero(bits(got) != bits(want))
        print(f"{module.__name__.rsplit('.', 1)[1]} {name} {got.shape} {got.dtype}: {diff.size} elements differ")
        assert got.shape == want.shape and diff.size == 0


def test_split_halves_partial_rotary_is_gpt_neox():
    """R < Dh: GPT-NeoX rotates q[..., :R] (cos.shape[-1] = R) and concatenates q[..., R:] unchanged."""
    rng = np.random.default_rng(5)
    q, k = (rng.standard_normal((2, 3, 9, 16)).astype(np.float32) for _ in range(2))
    table = sincos_table(9, 8)
    cos, sin = hf_cos_sin(table, 9)
    hq, hk = modeling_gpt_neox.apply_rotary_pos_emb(torch.from_numpy(q), torch.from_numpy(k), cos, sin)
    ours = roformer_rotary_ref([q, k], table, rotary_dim=8, interleaved=LAYOUT_SPLIT_HALVES)
    assert np.array_equal(bits(hq.numpy()), bits(ours[0])) and np.array_equal(bits(hk.numpy()), bits(ours[1]))
    assert np.array_equal(ours[0][..., 8:], q[..., 8:])


def onnx_rotary_model(shape: tuple[int, ...], rows: int, r: int) -> onnx.ModelProto:
    """ai.onnx RotaryEmbedding-23, interleaved=0, 4-D x [B, H, S, Dh], caches [P, R/2], position_ids [B, S]."""
    b, h, s, dh = shape
    attrs = {"interleaved": 0, **({"rotary_embedding_dim": r} if r != dh else {})}
    node = helper.make_node("RotaryEmbedding", ["x", "cos", "sin", "pos"], ["y"], **attrs)
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "rope",
        [
            helper.make_tensor_value_info("x", f32, list(shape)),
            helper.make_tensor_value_info("cos", f32, [rows, r // 2]),
            helper.make_tensor_value_info("sin", f32, [rows, r // 2]),
            helper.make_tensor_value_info("pos", TensorProto.INT64, [b, s]),
        ],
        [helper.make_tensor_value_info("y", f32, list(shape))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


@pytest.mark.parametrize("b,h,s,dh,r", [(2, 3, 17, 64, 64), (3, 2, 9, 16, 8), (1, 4, 33, 128, 128), (2, 2, 5, 10, 6)])
@pytest.mark.parametrize("offset", [0, 4])
def test_split_halves_is_onnx_rotary_embedding(b, h, s, dh, r, offset):
    """ONNX's own RotaryEmbedding (interleaved=0, position ids, partial rotary through rotary_embedding_dim):
    onnx.reference (numpy, two roundings) bit for bit; ONNX Runtime (fused multiply-adds) within the rounding
    bound of one pair, 2 * eps32 * (|x0| + |x1|) (|sin|, |cos| <= 1), pass-through channels exact. Position p
    reads cache row p + offset, which is our table from row `offset` on."""
    rng = np.random.default_rng(s)
    x = (rng.standard_normal((b, h, s, dh)) * 4).astype(np.float32)
    table = sincos_table(s + offset + 2, r)
    feeds = {
        "x": x,
        "cos": np.ascontiguousarray(table[:, r // 2 :]),
        "sin": np.ascontiguousarray(table[:, : r // 2]),
        "pos": np.broadcast_to(np.arange(offset, offset + s, dtype=np.int64), (b, s)).copy(),
    }
    want = roformer_rotary_ref([x], table[offset:], interleaved=LAYOUT_SPLIT_HALVES)[0]
    model = onnx_rotary_model(x.shape, table.shape[0], r)
    got_ref = ReferenceEvaluator(model).run(None, feeds)[0]
    assert np.array_equal(bits(got_ref), bits(want))
    got_ort = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    pair = np.abs(x[..., : r // 2]) + np.abs(x[..., r // 2 : r])  # [B, H, S, R/2]: |x0| + |x1| of pair j
    bound = 2 * np.finfo(np.float32).eps * np.concatenate([pair, pair], -1)
    err = np.abs(got_ort[..., :r].astype(np.float64) - want[..., :r])
    print(f"ORT RotaryEmbedding vs reference: max |diff| {err.max():.3g}, worst diff/bound {(err / bound).max():.3g}")
    assert np.all(err <= bound)
    assert np.array_equal(bits(got_ort[..., r:]), bits(x[..., r:]))


def test_bf16_round_is_nearest_even():
    assert torch.equal(
        torch.from_numpy(bf16_round(np.array([1.00390625, 1.01171875, -3.3], np.float32))),
        torch.tensor([1.00390625, 1.01171875, -3.3]).to(torch.bfloat16).float(),
    )
    v = np.random.default_rng(3).standard_normal(10000).astype(np.float32)
    assert np.array_equal(bf16_round(v), torch.from_numpy(v).to(torch.bfloat16).float().numpy())
