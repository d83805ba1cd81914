"""Error statistics between an output and its reference (Polygraphy-style, per output)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ErrorStats:
    max_abs: float
    mean_abs: float
    max_rel: float
    cosine: float
    n_nan: int

    def to_dict(self) -> dict:
        return asdict(self)


def error_stats(got: np.ndarray, ref: np.ndarray) -> ErrorStats:
    """got, ref: same shape; compared in float64. Relative error is guarded against /0 only."""
    if got.shape != ref.shape:
        raise ValueError(f"shape {got.shape} differs from reference {ref.shape}")
    g, r = got.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    n_nan = int(np.isnan(g).sum())
    a = np.abs(g - r)
    rel = a / np.maximum(np.abs(r), 1e-12)
    denom = np.linalg.norm(g) * np.linalg.norm(r)
    # two all-zero vectors are identical; one zero vector against a non-zero one is not similar at all
    cosine = float(np.dot(g, r) / denom) if denom > 0 else (1.0 if not g.any() and not r.any() else 0.0)
    if g.size == 0:
        return ErrorStats(0.0, 0.0, 0.0, 1.0, 0)
    return ErrorStats(float(a.max()), float(a.mean()), float(rel.max()), cosine, n_nan)
