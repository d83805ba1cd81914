"""The tables the rewritten graph reads, from the family's `RotaryTable` (export/families/spec.py), and the
bound within which a table the exporter computed in the graph may differ from them.

In: a `RotaryTable` (R, theta, scaling) and a row count. Out: the contract's `sincos` [P, R] = [sin | cos]
(what RoformerRotary reads; `RotaryEmbedding` reads its halves), built in float64 and rounded once to fp32
(scripts/measure_sincos_error.py measures why), and `fp32_sincos_error`, which lets the probe tell "the same
table, rounded differently" from "another table" (a wrong theta, the global and local theta swapped).
"""

from __future__ import annotations

import numpy as np

from export.families.spec import RotaryTable


def sincos(table: RotaryTable, rows: int) -> np.ndarray:
    """[P, R] = [sin | cos] fp32 (times the table's scaling), float64-built."""
    cos, sin = table.cos_sin(rows)
    return np.concatenate([sin, cos], axis=1)


def describe(table: RotaryTable) -> str:
    return table.describe()


def fp32_sincos_error(table: RotaryTable, rows: int) -> float:
    """A bound on |sin/cos of an fp32-formed angle - the float64 value| over positions p < rows, for a table
    the exporter computes in the graph the way HF does (inv_freq = 1 / theta**(arange(0, R, 2) / R) in fp32,
    angle = float32(p) * inv_freq, then fp32 sin/cos, times the scaling). With u = 2j/R:
      - inv_freq: u rounded (relative eps/2, times ln(theta) u through the power), the power and the
        division (one eps and a half): relative (ln(theta) u / 2 + 1.5) eps;
      - the product p * inv_freq: half an ulp, relative eps / 2;
    so the angle is off by at most p theta**-u (ln(theta) u / 2 + 2) eps, which falls with u (theta > 1): at
    most 2 eps p, plus 2 eps for fp32 sin/cos themselves, all times the scaling (and one more rounding when
    it is not 1). Measured on HF's own code for theta in {1e3 .. 5e5}, R in {16, 64}, p < 8192: at most 0.3
    of this bound (tests/export/passes/rotary/test_tables.py); a wrong theta is off by O(1) within a few
    positions."""
    eps = float(np.finfo(np.float32).eps)
    inv_max = max(1.0, float(np.max(np.abs(table.inv_freq()))))
    bound = 2 * eps * max(rows - 1, 0) * inv_max + 2 * eps
    return abs(table.scaling) * bound + (eps * abs(table.scaling) if table.scaling != 1.0 else 0.0)
