"""What the rotary pass is told about one layer's rotary embedding: `RotarySpec`.

In: the facts a model family declares per layer (export/families/ builds them from the checkpoint's config).
Out: the constant table the rewritten graph reads, and the bound that a table the exporter computed in
the graph in fp32 stays within, so the probe can tell "the same table, rounded differently" from "another
table" (a wrong θ, the global and local θ swapped).

- `layout`: "interleaved" (adjacent pairs, RoFormer) or "split-halves" (HF's rotate_half: pairs
  (x[j], x[j + R/2]), GPT-NeoX / LLaMA / ModernBERT ...); it is the `interleaved` attribute, 1 or 0.
- `rotary_dim`: R, the leading dims of each head that rotate (R <= Dh; R < Dh is partial rotary).
- `theta`: the base; pair j turns by p * theta**(-2j/R) (HF's default rope_type).
- `inv_freq`: the R/2 frequencies themselves, for a table that is not theta**(-2j/R) (a rope_parameters
  scaling); theta then only sizes the error bound.
The table is built in float64 and rounded once to fp32, as the RoformerRotary contract's table is
(scripts/measure_sincos_error.py measures the difference against fp32 angles).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export.reference import rotary_angles

LAYOUTS = {"interleaved": 1, "split-halves": 0}  # spec layout -> the `interleaved` attribute


@dataclass(frozen=True)
class RotarySpec:
    layout: str
    rotary_dim: int
    theta: float = 10000.0
    inv_freq: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"rotary layout {self.layout!r} is unknown; use one of {sorted(LAYOUTS)}")
        if self.rotary_dim <= 0 or self.rotary_dim % 2:
            raise ValueError(f"rotary_dim must be a positive even number, got {self.rotary_dim}")
        if not self.theta > 1.0:
            raise ValueError(f"theta must be above 1, got {self.theta}")
        if self.inv_freq is not None and len(self.inv_freq) != self.rotary_dim // 2:
            raise ValueError(f"inv_freq has {len(self.inv_freq)} entries, rotary_dim {self.rotary_dim} needs R/2")

    @property
    def interleaved(self) -> int:
        return LAYOUTS[self.layout]

    def describe(self) -> str:
        freq = "inv_freq given" if self.inv_freq is not None else f"theta {self.theta:g}"
        return f"{self.layout}, R={self.rotary_dim}, {freq}"

    def angles(self, rows: int) -> np.ndarray:
        """[P, R/2] float64 angles p * theta_j."""
        if self.inv_freq is None:
            return rotary_angles(rows, self.rotary_dim, self.theta)
        return np.arange(rows, dtype=np.float64)[:, None] * np.asarray(self.inv_freq, np.float64)[None, :]

    def table(self, rows: int) -> np.ndarray:
        """[P, R] = [sin | cos] in fp32, built in float64 and rounded once (the contract's `sincos`)."""
        ang = self.angles(rows)
        return np.concatenate([np.sin(ang), np.cos(ang)], axis=1).astype(np.float32)

    def fp32_sincos_error(self, rows: int) -> float:
        """A bound on |sin/cos of an fp32-formed angle - the float64 value| over positions p < rows, for a
        table the exporter computes in the graph the way HF does (inv_freq = 1 / theta**(arange(0, R, 2) / R)
        in fp32, angle = float32(p) * inv_freq, then fp32 sin/cos). With u = 2j/R:
          - inv_freq: u rounded (relative eps/2, times ln(theta) u through the power), the power and the
            division (one eps and a half): relative (ln(theta) u / 2 + 1.5) eps;
          - the product p * inv_freq: half an ulp, relative eps / 2;
        so the angle is off by at most p theta**-u (ln(theta) u / 2 + 2) eps, which falls with u (theta > 1):
        at most 2 eps p (inv_freq <= 1), plus 2 eps for fp32 sin/cos themselves. Measured on HF's own code
        for theta in {1e3 .. 5e5}, R in {8 .. 128}, p < 8192: at most 0.3 of this bound
        (tests/export/passes/rotary/test_spec.py); a wrong theta is off by O(1) within a few positions."""
        eps = float(np.finfo(np.float32).eps)
        inv_max = 1.0 if self.inv_freq is None else max(1.0, float(max(abs(f) for f in self.inv_freq)))
        return 2 * eps * max(rows - 1, 0) * inv_max + 2 * eps
