"""The tables the rewritten graph reads (from the family's RotaryTable: the contract's float64-built table)
and the fp32 bound the probe allows a table the exporter computes in the graph: it holds on HF's own
computation, and it is not so loose that a wrong theta fits in it."""

import dataclasses

import numpy as np
import pytest
import torch

from export.families.spec import RotaryTable
from export.passes.rotary.tables import describe, fp32_sincos_error, sincos
from export.reference import sincos_table


def test_the_table_is_the_contracts_table():
    table = RotaryTable("global", 16, 160000.0)
    np.testing.assert_array_equal(sincos(table, 50), sincos_table(50, 16, 160000.0))
    assert sincos(table, 50).dtype == np.float32 and sincos(table, 50).shape == (50, 16)
    assert describe(table) == "global, R=16, theta 160000"
    scaled = dataclasses.replace(table, scaling=0.5)
    np.testing.assert_allclose(sincos(scaled, 50), 0.5 * sincos_table(50, 16, 160000.0).astype(np.float64), atol=6e-8)
    assert fp32_sincos_error(scaled, 50) > 0.5 * fp32_sincos_error(table, 50)


def hf_fp32_sincos(rows: int, dim: int, theta: float) -> np.ndarray:
    """transformers' default rope init and forward (ModernBertRotaryEmbedding, LlamaRotaryEmbedding): fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    ang = torch.arange(rows).float()[:, None] * inv_freq
    return torch.cat([ang.sin(), ang.cos()], dim=1).double().numpy()


@pytest.mark.parametrize("theta", [1000.0, 10000.0, 20000.0, 160000.0, 500000.0])
@pytest.mark.parametrize("dim", [16, 64])
def test_the_fp32_bound_holds_on_hfs_computation_and_is_not_loose(theta, dim):
    table = RotaryTable("t", dim, theta)
    ang = table.angles(8192)
    err = np.abs(hf_fp32_sincos(8192, dim, theta) - np.concatenate([np.sin(ang), np.cos(ang)], axis=1))
    for rows in (37, 512, 8192):
        worst, bound = float(err[:rows].max()), fp32_sincos_error(table, rows)
        assert worst <= bound, (rows, worst, bound)
    if dim == 64:  # 32 frequencies meet the worst case: measured 0.15-0.3 of the bound at 8192 rows
        assert float(err.max()) >= fp32_sincos_error(table, 8192) / 10
    wrong = dataclasses.replace(table, theta=theta * 1.05)  # 5% off: the table of another model
    off = np.abs(hf_fp32_sincos(37, dim, theta) - sincos(wrong, 37).astype(np.float64)).max()
    assert off > 100 * fp32_sincos_error(table, 37)
