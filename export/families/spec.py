"""What a family says about each encoder layer: its rotary (layout, rotated width, table) and its attention kind.

The graph passes, validation and diagnosis read these and never a `model_type`: a family file
(export/families/<name>.py) returns one `LayerRotary` and one `LayerAttention` per layer, computed from the
checkpoint's config. Letters as everywhere: B batch, S sequence, H heads, Dh head size, R rotated channels
per head (2 <= R <= Dh, even), P table rows (positions).

The rotation, pair j < R/2 of a head at position p, angle a = p * inv_freq[j], scale s (1 unless the rope
type says otherwise):
    y_first  = s * (x_first * cos a - x_second * sin a)
    y_second = s * (x_second * cos a + x_first * sin a)
where (x_first, x_second) is (x[2j], x[2j+1]) for INTERLEAVED (RoFormer) and (x[j], x[j + R/2]) for
SPLIT_HALVES (GPT-NeoX / LLaMA rotate_half: ModernBERT, GTE, NomicBERT, ESM-2, EuroBERT, jina-v3); channels
R..Dh-1 pass through unchanged. Same letters as ai.onnx RotaryEmbedding: `interleaved` 1 / 0,
`rotary_embedding_dim` R.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export.reference import rotary_angles

INTERLEAVED, SPLIT_HALVES = "interleaved", "split-halves"
LAYOUTS = (INTERLEAVED, SPLIT_HALVES)
FULL, SLIDING = "full", "sliding"
# The table formulas implemented (transformers 5.25 modeling_rope_utils: compute_default_rope_parameters,
# _compute_linear_scaling_rope_parameters, _compute_dynamic_ntk_parameters); a family's config check refuses
# the others. "dynamic" recomputes its table from the sequence length above max_position_embeddings
# (dynamic_rope_update): below it, it is the default table; above it, no one constant table is right.
ROPE_TYPES = ("default", "linear", "dynamic")


@dataclass(frozen=True)
class RotaryTable:
    """One table of angles: inv_freq[j] = 1 / theta**(2j / R) for rope_type "default" (HF's
    compute_default_rope_parameters and RoFormer's sinusoidal table alike), cos and sin scaled by `scaling`.

    name: layers that name the same table share its constants ("default"; ModernBERT: "global", "local").
    parameters: what the rope type needs besides theta, as sorted (key, value) pairs:
    - "linear" (`factor` f): inv_freq / f, i.e. position p rotates as p / f (HF
      _compute_linear_scaling_rope_parameters);
    - "dynamic" (`factor`, `max_position_embeddings` N): HF _compute_dynamic_ntk_parameters with
      seq_len = max(S, N) makes the base theta * (f S / N - (f - 1))**(R / (R - 2)), which is theta itself for
      every S <= N: the default table, valid for positions < N only (`max_rows`)."""

    name: str
    dim: int  # R
    theta: float
    rope_type: str = "default"
    scaling: float = 1.0  # HF's attention_scaling: multiplies cos and sin
    parameters: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        if self.dim < 2 or self.dim % 2:
            raise ValueError(f"rotary table {self.name!r}: dim {self.dim} must be even and >= 2")
        if not (self.theta > 0 and np.isfinite(self.theta)):
            raise ValueError(f"rotary table {self.name!r}: theta {self.theta} must be a finite number > 0")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rotary table {self.name!r}: rope_type {self.rope_type!r} is not one of {ROPE_TYPES}")
        needs = {"default": (), "linear": ("factor",), "dynamic": ("factor", "max_position_embeddings")}
        missing = [k for k in needs[self.rope_type] if k not in dict(self.parameters)]
        if missing:
            raise ValueError(f"rotary table {self.name!r}: rope_type {self.rope_type!r} needs {missing}")
        factor = self.parameter("factor")
        if factor is not None and not (np.isfinite(factor) and factor > 0):
            raise ValueError(f"rotary table {self.name!r}: factor {factor} must be a finite number > 0")

    def parameter(self, key: str):
        return dict(self.parameters).get(key)

    @property
    def max_rows(self) -> int | None:
        """Positions this one constant table is right for (None: any): a sequence-dependent rope type changes its
        table above max_position_embeddings."""
        return int(self.parameter("max_position_embeddings")) if self.rope_type == "dynamic" else None

    def _scale(self) -> float:
        """What inv_freq is divided by: the linear factor, else 1."""
        return float(self.parameter("factor")) if self.rope_type == "linear" else 1.0

    def inv_freq(self) -> np.ndarray:
        """float64 [R/2]: the angle per position of each pair."""
        return rotary_angles(2, self.dim, self.theta)[1] / self._scale()  # row p = 1 is inv_freq itself

    def angles(self, rows: int) -> np.ndarray:
        """float64 [P, R/2]: p * inv_freq[j] for p < rows, written as rotary_angles writes it."""
        if self.max_rows is not None and rows > self.max_rows:
            raise ValueError(
                f"rotary table {self.name!r}: rope_type {self.rope_type!r} changes its table with the sequence "
                f"length above {self.max_rows} positions; no constant table of {rows} rows is right"
            )
        return rotary_angles(rows, self.dim, self.theta) / self._scale()

    def describe(self) -> str:
        """e.g. "default, R=16, theta 10000" or "default, R=16, theta 160000, linear factor 1.297"."""
        extra = "".join(f", {k} {v:g}" if isinstance(v, float) else f", {k} {v}" for k, v in self.parameters)
        kind = f", {self.rope_type}" if self.rope_type != "default" else ""
        return f"{self.name}, R={self.dim}, theta {self.theta:g}{kind}{extra}" + (
            f", scaling {self.scaling:g}" if self.scaling != 1.0 else ""
        )

    def cos_sin(self, rows: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """cos and sin tables [P, R/2] (times `scaling`), computed in float64 and rounded once to `dtype`:
        the ai.onnx RotaryEmbedding `cos_cache` / `sin_cache` for positions 0..rows-1."""
        a = self.angles(rows)
        return (self.scaling * np.cos(a)).astype(dtype), (self.scaling * np.sin(a)).astype(dtype)


@dataclass(frozen=True)
class LayerRotary:
    """The rotary of one layer: the tensors it rotates (with their head counts), how channels pair, the table.

    heads: (site, heads) in the order the layer computes them, e.g. (("query", 12), ("key", 12)); RoFormer
    with rotary_value adds ("value", 12); grouped-query attention has fewer key heads."""

    layout: str  # INTERLEAVED or SPLIT_HALVES
    head_dim: int  # Dh
    table: RotaryTable  # table.dim is R
    heads: tuple[tuple[str, int], ...]

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"rotary layout {self.layout!r} is not one of {LAYOUTS}")
        if not 2 <= self.table.dim <= self.head_dim:
            raise ValueError(f"rotary dim {self.table.dim} must be in 2..head_dim {self.head_dim}")
        if not self.heads or any(n < 1 for _, n in self.heads):
            raise ValueError(f"rotary heads {self.heads} must name at least one site with >= 1 head")

    @property
    def dim(self) -> int:
        """R: the rotated channels of each head (the rest pass through)."""
        return self.table.dim

    @property
    def interleaved(self) -> int:
        """The `interleaved` attribute of ai.onnx RotaryEmbedding and of the RoformerRotary plugin."""
        return int(self.layout == INTERLEAVED)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(site for site, _ in self.heads)


@dataclass(frozen=True)
class LayerAttention:
    """Which keys a query attends to: all of them (FULL), or those within `half_window` positions
    (SLIDING: token i attends to token j when |i - j| <= half_window), padding excluded either way."""

    kind: str  # FULL or SLIDING
    half_window: int | None = None

    def __post_init__(self):
        if self.kind not in (FULL, SLIDING):
            raise ValueError(f"attention kind {self.kind!r} is not {FULL!r} or {SLIDING!r}")
        if (self.kind == SLIDING) != (self.half_window is not None) or (self.half_window or 0) < 0:
            raise ValueError(f"{self.kind} attention with half_window {self.half_window}")

    def allowed(self, seq: int) -> np.ndarray:
        """bool [S, S]: query i may attend to key j (before padding is masked)."""
        if self.kind == FULL:
            return np.ones((seq, seq), dtype=bool)
        i = np.arange(seq)
        return np.abs(i[:, None] - i[None, :]) <= self.half_window

    def describe(self) -> str:
        return "full" if self.kind == FULL else f"sliding, half-window {self.half_window}"
