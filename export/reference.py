"""Numpy references: the RoformerRotary contract (plugins/roformer_rotary/README.md) and the pooled
`sentence_embedding` (export/passes/pooling/).

The single source of truth that the graph pass's site checks, the CPU lowering, the C++ host
reference and the CUDA kernel tests compare against, and that validation grades the pooled output
with. Pure functions, no runtime around them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_BASE = 10000.0


def rotary_angles(max_len: int, rotary_dim: int, base: float = DEFAULT_BASE) -> np.ndarray:
    """float64 angles p * theta_j, written as HF's create_weight does (p / base**(2j/R)).

    Returns [P, R/2] float64.
    """
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"rotary_dim must be a positive even number, got {rotary_dim}")
    pos = np.arange(max_len, dtype=np.float64)[:, None]  # [P, 1]
    j = np.arange(rotary_dim // 2, dtype=np.float64)[None, :]  # [1, R/2]
    return pos / np.power(base, 2.0 * j / rotary_dim)  # [P, R/2]


def sincos_table(max_len: int, rotary_dim: int, base: float = DEFAULT_BASE, dtype=np.float32) -> np.ndarray:
    """The contract's `sincos` input: [P, R] = [sin | cos] halves, built in float64, rounded once."""
    ang = rotary_angles(max_len, rotary_dim, base)  # [P, R/2]
    return np.concatenate([np.sin(ang), np.cos(ang)], axis=1).astype(dtype)  # [P, R]


# The `interleaved` attribute (a leaf module: the same values as plugins.identity's, checked by its tests).
LAYOUT_INTERLEAVED = 1  # pairs (x[2j], x[2j + 1]): RoFormer
LAYOUT_SPLIT_HALVES = 0  # pairs (x[j], x[j + R/2]): HF rotate_half (GPT-NeoX, LLaMA, ModernBERT, ...)


def rotary_pairs(rotary_dim: int, interleaved: int) -> tuple[slice, slice]:
    """Channel slices of the first and second element of the R/2 pairs, pair j at position j of each."""
    if interleaved == LAYOUT_INTERLEAVED:
        return slice(0, rotary_dim, 2), slice(1, rotary_dim, 2)
    if interleaved == LAYOUT_SPLIT_HALVES:
        return slice(0, rotary_dim // 2), slice(rotary_dim // 2, rotary_dim)
    raise NotImplementedError(f"interleaved={interleaved!r}: RoformerRotary defines 1 (adjacent pairs) and 0 (halves)")


def roformer_rotary_ref(
    xs: Sequence[np.ndarray], sincos: np.ndarray, rotary_dim: int | None = None, interleaved: int = LAYOUT_INTERLEAVED
) -> list[np.ndarray]:
    """RoformerRotary, exactly as the contract states it: fp32 products and sums, no FMA.

    xs: k arrays [B, H_i, S, Dh], one dtype (float32, float16, or a bfloat16 emulation passed as float32);
    each may have its own head count H_i (grouped-query attention), B, S and Dh are shared.
    sincos: [P, R] float32 with P >= S. interleaved: 1 rotates pairs (x[2j], x[2j+1]) (RoFormer), 0 pairs
    (x[j], x[j+R/2]) (HF rotate_half); channels R..Dh pass through. Returns k arrays [B, H_i, S, Dh] in the
    inputs' dtype.
    """
    if not xs:
        raise ValueError("RoformerRotary needs at least one tensor to rotate")
    dtype = xs[0].dtype
    if any(x.ndim != 4 or x.dtype != dtype for x in xs):
        raise ValueError(f"rotated tensors must be rank 4 of one dtype, got {[(x.shape, x.dtype) for x in xs]}")
    b, _, s, dh = xs[0].shape
    if any((x.shape[0], x.shape[2], x.shape[3]) != (b, s, dh) for x in xs):
        raise ValueError(f"rotated tensors must share B, S and Dh (H may differ), got {[x.shape for x in xs]}")
    r = sincos.shape[1] if rotary_dim is None else rotary_dim
    if r % 2 or not 2 <= r <= dh or sincos.shape[1] != r:
        raise ValueError(f"rotary_dim {r} must be even, 2 <= R <= Dh={dh} and equal sincos width {sincos.shape[1]}")
    if sincos.shape[0] < s:
        raise ValueError(f"sincos has {sincos.shape[0]} rows, sequence needs {s}")
    first, second = rotary_pairs(r, interleaved)
    table = sincos[:s].astype(np.float32)  # [S, R]
    sin, cos = table[:, : r // 2], table[:, r // 2 :]  # [S, R/2] each, broadcast over [B, H_i]
    out = []
    for x in xs:
        xf = x.astype(np.float32)  # [B, H_i, S, Dh]
        x0, x1 = xf[..., first], xf[..., second]  # [B, H_i, S, R/2] each: pair j = (x0[j], x1[j])
        y = xf.copy()
        # np.float32 products, then the sum: two roundings, as the contract states (no FMA).
        y[..., first] = (x0 * cos).astype(np.float32) - (x1 * sin).astype(np.float32)
        y[..., second] = (x1 * cos).astype(np.float32) + (x0 * sin).astype(np.float32)
        out.append(y.astype(dtype))
    return out


def bf16_round(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest even), returned as float32: what __float2bfloat16_rn does."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = np.isnan(x)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    out = rounded.astype(np.uint32).view(np.float32)
    return np.where(nan, np.float32(np.nan), out)


MEAN_CLAMP = 1e-9  # sentence-transformers' Pooling: torch.clamp(sum_mask, min=1e-9)
NORM_EPS = 1e-12  # sentence-transformers' Normalize: F.normalize(p=2, dim=-1), whose eps is 1e-12
# sentence-transformers' Pooling modes (POOLING_MODES of sentence_transformer/modules/pooling.py, 6.3.0), in the
# order its legacy `pooling_mode_*_tokens` flags concatenate them
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
ACTIVATIONS = ("identity", "tanh", "relu", "gelu", "sigmoid", "silu")  # Dense activations (torch.nn classes)


def sentence_embedding_ref(
    hidden: np.ndarray,
    mask: np.ndarray,
    mode: str,
    normalize: bool = False,
    dense: tuple = (),
    truncate_dim: int | None = None,
) -> np.ndarray:
    """sentence-transformers' pipeline on `last_hidden_state` (Pooling, Dense..., truncation, Normalize), in float64.

    hidden: [B, S, D]; mask: [B, S] of 0/1. mode: one of POOLING_MODES or several joined by "+" (concatenated
    in that order, [B, k*D]). dense: (weight [out, in], bias [out] or None, activation) per Dense layer, applied
    in order: act(e @ weight.T + bias). truncate_dim: keep the first N channels (Matryoshka), before the
    normalisation. normalize: e / max(||e||_2, 1e-12). Returns [B, width] float64.
    """
    h = hidden.astype(np.float64)  # [B, S, D]
    m = mask.astype(np.float64)  # [B, S]
    e = np.concatenate([_pool(h, m, part) for part in mode.split("+")], axis=1)  # [B, k*D]
    for weight, bias, activation in dense:
        e = e @ np.asarray(weight, np.float64).T + (0.0 if bias is None else np.asarray(bias, np.float64))
        e = _activation(e, activation)
    if truncate_dim is not None:
        e = e[:, :truncate_dim]
    if normalize:
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), NORM_EPS)  # [B, W] / [B, 1]
    return e


def _pool(h: np.ndarray, m: np.ndarray, mode: str) -> np.ndarray:
    """One Pooling mode, [B, D]: sentence-transformers 6.3.0 Pooling._forward_padded on a padded batch."""
    b, s, _ = h.shape
    count = m.sum(axis=1, keepdims=True)  # [B, 1]
    first = m.argmax(axis=1)  # [B]: the first non-padded token (0 for a row of padding)
    if mode in ("mean", "mean_sqrt_len_tokens"):
        denom = np.maximum(count, MEAN_CLAMP)
        return (h * m[..., None]).sum(axis=1) / (denom if mode == "mean" else np.sqrt(denom))
    if mode == "cls":
        return h[np.arange(b), first]
    if mode == "max":  # a row of padding gives -inf, as torch's masked_fill(-inf).max does
        return np.where(m[..., None] > 0, h, -np.inf).max(axis=1)
    if mode == "weightedmean":  # weights 1, 2, ... from the first non-padded token
        w = (np.arange(1, s + 1)[None, :] - first[:, None]) * m  # [B, S]
        return (h * w[..., None]).sum(axis=1) / np.maximum(w.sum(axis=1, keepdims=True), MEAN_CLAMP)
    if mode == "lasttoken":  # the last non-padded token; a row of padding gives zeros
        last = np.where(count[:, 0] > 0, s - 1 - m[:, ::-1].argmax(axis=1), 0)
        return (h * m[..., None])[np.arange(b), last]
    raise NotImplementedError(f"pooling {mode!r} is not one of {POOLING_MODES}")


def _activation(x: np.ndarray, name: str) -> np.ndarray:
    if name == "identity":
        return x
    if name == "tanh":
        return np.tanh(x)
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if name == "silu":
        return x / (1.0 + np.exp(-x))
    if name == "gelu":  # torch.nn.GELU(): the exact (erf) form
        return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    raise NotImplementedError(f"activation {name!r} is not one of {ACTIVATIONS}")
