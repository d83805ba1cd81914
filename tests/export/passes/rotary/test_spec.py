"""RotarySpec: the table it builds (the contract's float64-built table), its checks, and the fp32 bound the
probe allows a table the exporter computes in the graph: it holds on HF's own computation and it is not
so loose that a wrong theta fits in it."""

import dataclasses

import numpy as np
import pytest
import torch

from export.passes.rotary.spec import RotarySpec
from export.reference import sincos_table


def test_the_table_is_the_contracts_table():
    spec = RotarySpec("split-halves", 16, 160000.0)
    np.testing.assert_array_equal(spec.table(50), sincos_table(50, 16, 160000.0))
    assert spec.table(50).dtype == np.float32 and spec.interleaved == 0
    assert RotarySpec("interleaved", 8).interleaved == 1
    inv = tuple(1.0 / 10000.0 ** (2.0 * np.arange(4) / 8))
    np.testing.assert_allclose(dataclasses.replace(spec, rotary_dim=8, theta=1e4, inv_freq=inv).table(9),
                               sincos_table(9, 8), rtol=0, atol=1e-7)  # fmt: skip


@pytest.mark.parametrize(
    "kwargs,why",
    [
        (dict(layout="rotate-half", rotary_dim=8), "layout 'rotate-half' is unknown"),
        (dict(layout="split-halves", rotary_dim=7), "positive even"),
        (dict(layout="split-halves", rotary_dim=8, theta=1.0), "theta must be above 1"),
        (dict(layout="split-halves", rotary_dim=8, inv_freq=(1.0,)), "inv_freq has 1 entries"),
    ],
)
def test_a_spec_that_cannot_be_built_says_why(kwargs, why):
    with pytest.raises(ValueError, match=why):
        RotarySpec(**kwargs)


def hf_fp32_sincos(rows: int, dim: int, theta: float) -> np.ndarray:
    """transformers' default rope init and forward (ModernBertRotaryEmbedding, LlamaRotaryEmbedding): fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    ang = torch.arange(rows).float()[:, None] * inv_freq
    return torch.cat([ang.sin(), ang.cos()], dim=1).double().numpy()


@pytest.mark.parametrize("theta", [1000.0, 10000.0, 20000.0, 160000.0, 500000.0])
@pytest.mark.parametrize("dim", [16, 64])
def test_the_fp32_bound_holds_on_hfs_computation_and_is_not_loose(theta, dim):
    spec = RotarySpec("split-halves", dim, theta)
    exact = np.concatenate([np.sin(spec.angles(8192)), np.cos(spec.angles(8192))], axis=1)
    err = np.abs(hf_fp32_sincos(8192, dim, theta) - exact)
    for rows in (37, 512, 8192):
        worst, bound = float(err[:rows].max()), spec.fp32_sincos_error(rows)
        assert worst <= bound, (rows, worst, bound)
    if dim == 64:  # 32 frequencies meet the worst case: measured 0.15-0.3 of the bound at 8192 rows
        assert float(err.max()) >= spec.fp32_sincos_error(8192) / 10
    wrong = RotarySpec("split-halves", dim, theta * 1.05)  # 5% off: the table of another model
    off = np.abs(hf_fp32_sincos(37, dim, theta) - wrong.table(37).astype(np.float64)).max()
    assert off > 100 * spec.fp32_sincos_error(37)
