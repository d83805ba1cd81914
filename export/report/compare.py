"""Error statistics between an output and its reference: the numbers report.json stores and the gate re-checks.

Each statistic is a property of the two tensors alone, never of a threshold, so any gate can re-judge a
report with its own thresholds (export/report/thresholds.py holds the rule and the defaults):

- max_abs, mean_abs: |got - ref| over the whole tensor (padded rows included), as in schema 1;
- scaled_error = max_abs / max|ref|: the largest error as a fraction of the output's largest magnitude. It does
  not depend on the output's scale, and floating-point error is relative to the magnitude of the values
  computed, so honest builds land on nearly the same number whether or not the model has outlier channels
  (measured: scripts/results/gate_sensitivity/gate_sensitivity.md). The per-element relative error (schema 1's
  max_rel) is gone: hidden states have elements near zero, where it is large for honest builds and says nothing;
- cosine: over the whole flattened tensor;
- row_cosine: for outputs whose last axis is the hidden one (ROW_OUTPUTS: per token for last_hidden_state,
  per sentence for sentence_embedding), the minimum over non-padded rows of the cosine over that axis: one
  badly wrong token shows here even when the whole tensor's cosine is fine. Other outputs (logits) have none;
- n_nan: NaN count of the output.
A leaf module: numpy only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

ROW_OUTPUTS = {"last_hidden_state": "token", "sentence_embedding": "sentence"}  # output -> what a row is
TINY = float(np.finfo(np.float32).tiny)  # the scale of an all-zero reference: keeps scaled_error finite


@dataclass(frozen=True)
class ErrorStats:
    max_abs: float
    mean_abs: float
    scaled_error: float
    cosine: float
    n_nan: int
    row_cosine: float | None = None  # None: the output has no rows (logits)

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.row_cosine is None:
            del d["row_cosine"]
        return d


def error_stats(got: np.ndarray, ref: np.ndarray, rows: np.ndarray | None = None) -> ErrorStats:
    """got, ref: same shape; compared in float64. rows: bool over got.shape[:-1], True for the rows whose
    cosine counts (non-padded), or None for an output without rows."""
    if got.shape != ref.shape:
        raise ValueError(f"shape {got.shape} differs from reference {ref.shape}")
    if got.size == 0:
        return ErrorStats(0.0, 0.0, 0.0, 1.0, 0, None if rows is None else 1.0)
    g, r = got.astype(np.float64), ref.astype(np.float64)
    a = np.abs(g - r)
    max_abs = float(a.max())
    return ErrorStats(
        max_abs,
        float(a.mean()),
        max_abs / max(float(np.abs(r).max()), TINY),
        _cosine(g.ravel(), r.ravel()),
        int(np.isnan(g).sum()),
        None if rows is None else _min_row_cosine(g, r, rows),
    )


def _cosine(g: np.ndarray, r: np.ndarray) -> float:
    denom = np.linalg.norm(g) * np.linalg.norm(r)
    # two all-zero vectors are identical; one zero vector against a non-zero one is not similar at all
    return float(np.dot(g, r) / denom) if denom > 0 else (1.0 if not g.any() and not r.any() else 0.0)


def _min_row_cosine(g: np.ndarray, r: np.ndarray, rows: np.ndarray) -> float:
    rows = np.asarray(rows, dtype=bool)
    if rows.shape != g.shape[:-1]:
        raise ValueError(f"row mask {rows.shape} does not match the rows {g.shape[:-1]} of the output")
    gr, rr = g[rows], r[rows]  # [n, hidden]
    if not len(gr):
        return 1.0
    dot, ng, nr = (gr * rr).sum(-1), np.linalg.norm(gr, axis=-1), np.linalg.norm(rr, axis=-1)
    both_zero = (ng == 0) & (nr == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(ng * nr > 0, dot / (ng * nr), np.where(both_zero, 1.0, 0.0))
    return float(cos.min())


def row_mask(output: str, shape: tuple[int, ...], attention_mask: np.ndarray) -> np.ndarray | None:
    """The rows of `output` whose cosine counts: tokens with attention_mask 1 ([B, S] or [B, C, S] rows), or
    every sentence that has a token ([B] rows of a [B, hidden] embedding); None for outputs without rows."""
    if output not in ROW_OUTPUTS or len(shape) < 2:
        return None
    mask = np.asarray(attention_mask) != 0
    rows = tuple(shape[:-1])
    if mask.shape == rows:
        return mask
    if mask.shape[: len(rows)] == rows:  # per sentence: any real token in it
        return mask.reshape(*rows, -1).any(axis=-1)
    raise ValueError(f"{output} rows {rows} do not match attention_mask {mask.shape}")
