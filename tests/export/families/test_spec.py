"""The per-layer specs the passes consume: the table formula against HF's, and the specs refuse nonsense."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.families.spec import FULL, INTERLEAVED, SLIDING, SPLIT_HALVES, LayerAttention, LayerRotary, RotaryTable
from export.reference import sincos_table


@pytest.mark.parametrize("theta", [10000.0, 160000.0])
def test_inv_freq_is_hf_default_rope(theta):
    """HF's compute_default_rope_parameters (float32) within fp32 rounding of our float64 formula."""
    from transformers import ModernBertConfig
    from transformers.models.modernbert.modeling_modernbert import ModernBertRotaryEmbedding

    cfg = ModernBertConfig(hidden_size=64, num_attention_heads=2, num_hidden_layers=1)
    cfg.rope_parameters["full_attention"]["rope_theta"] = theta
    hf, scaling = ModernBertRotaryEmbedding.compute_default_rope_parameters(cfg, layer_type="full_attention")
    ours = RotaryTable("global", 32, theta).inv_freq()
    assert scaling == 1.0
    np.testing.assert_allclose(ours, hf.double().numpy(), rtol=2 * np.finfo(np.float32).eps)


def test_cos_sin_are_the_roformer_table_halves():
    """RoFormer's sinusoidal table ([sin | cos], export.reference.sincos_table) is the same formula at theta 1e4."""
    cos, sin = RotaryTable("default", 16, 10000.0).cos_sin(50)
    table = sincos_table(50, 16)
    np.testing.assert_array_equal(sin, table[:, :8])
    np.testing.assert_array_equal(cos, table[:, 8:])
    assert cos.dtype == np.float32 and cos.shape == (50, 8)


def test_cos_sin_are_rounded_once_from_float64():
    c64, s64 = RotaryTable("local", 8, 10000.0).cos_sin(4096, dtype=np.float64)
    c32, s32 = RotaryTable("local", 8, 10000.0).cos_sin(4096)
    np.testing.assert_array_equal(c32, c64.astype(np.float32))
    np.testing.assert_array_equal(s32, s64.astype(np.float32))
    angles = torch.arange(4096, dtype=torch.float64)[:, None] * torch.from_numpy(RotaryTable("l", 8, 1e4).inv_freq())
    np.testing.assert_allclose(c64, torch.cos(angles).numpy(), atol=1e-12)


def test_layer_rotary_reads_as_the_onnx_attributes():
    r = LayerRotary(SPLIT_HALVES, 16, RotaryTable("global", 16, 160000.0), (("query", 4), ("key", 4)))
    assert (r.interleaved, r.dim, r.sites) == (0, 16, ("query", "key"))
    assert LayerRotary(INTERLEAVED, 16, RotaryTable("default", 8, 1e4), (("query", 2),)).interleaved == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: RotaryTable("t", 7, 1e4),
        lambda: RotaryTable("t", 8, 0.0),
        lambda: RotaryTable("t", 8, float("inf")),
        lambda: RotaryTable("t", 8, 1e4, rope_type="yarn"),
        lambda: LayerRotary("rotate-quarters", 8, RotaryTable("t", 8, 1e4), (("query", 1),)),
        lambda: LayerRotary(SPLIT_HALVES, 4, RotaryTable("t", 8, 1e4), (("query", 1),)),
        lambda: LayerRotary(SPLIT_HALVES, 8, RotaryTable("t", 8, 1e4), ()),
        lambda: LayerAttention(SLIDING),
        lambda: LayerAttention(FULL, 3),
        lambda: LayerAttention("causal"),
    ],
)
def test_specs_refuse_what_they_cannot_mean(make):
    with pytest.raises(ValueError):
        make()


def test_sliding_attention_allows_the_half_window_both_ways():
    a = LayerAttention(SLIDING, 8).allowed(61)
    i, j = np.nonzero(a)
    assert np.abs(i - j).max() == 8 and a[30, 22] and a[30, 38] and not a[30, 21] and not a[30, 39]
    assert LayerAttention(FULL).allowed(5).all()
    assert LayerAttention(SLIDING, 8).describe() == "sliding, half-window 8"
