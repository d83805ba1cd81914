"""The numpy reference of the RoformerRotary contract against HF's own RoFormer code and the paper."""

import numpy as np
import pytest
import torch
from transformers.models.roformer.modeling_roformer import (
    RoFormerSelfAttention,
    RoFormerSinusoidalPositionalEmbedding,
)

from export.reference import bf16_round, roformer_rotary_ref, rotary_angles, sincos_table


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


@pytest.mark.parametrize("bad", [dict(rotary_dim=3), dict(rotary_dim=10), dict(interleaved=0)])
def test_reference_rejects_what_the_contract_rejects(bad):
    x = np.zeros((1, 1, 2, 8), np.float32)
    with pytest.raises((ValueError, NotImplementedError)):
        roformer_rotary_ref([x], sincos_table(2, 8), **bad)


def test_bf16_round_is_nearest_even():
    assert torch.equal(
        torch.from_numpy(bf16_round(np.array([1.00390625, 1.01171875, -3.3], np.float32))),
        torch.tensor([1.00390625, 1.01171875, -3.3]).to(torch.bfloat16).float(),
    )
    v = np.random.default_rng(3).standard_normal(10000).astype(np.float32)
    assert np.array_equal(bf16_round(v), torch.from_numpy(v).to(torch.bfloat16).float().numpy())
