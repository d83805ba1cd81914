"""Compare two sides landmark by landmark and find where they part: the core of export.diagnose.

In:  a reference side and a candidate side (export/diagnose/sides.py), numpy feeds, the Threshold each
     landmark is judged by (the pass rule of export/report/thresholds.py, on the statistics of
     export/report/compare.py),
     a memory budget and an optional deadline.
Out: one Point per landmark both sides have, in depth order, and whether the run finished.

Memory: the landmarks of every layer exposed at once cost 7 x B x S x H floats per layer per side (Q, K,
rotated Q and K, three [B, S, H] tensors), 530 MB a side for the demo at S = 2048. So the layers are fetched
in groups: the first group (embeddings and layer 0) is measured, and the rest go in groups that fit
`budget_bytes` on both sides together. Each group costs one run of each side (for an ONNX graph one session,
the weights loaded once more); with the default budget the demo at S = 2048 needs 3 runs a side.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from export.diagnose.structure import STAGES, Key, key_layer
from export.report.compare import error_stats, row_mask
from export.report.thresholds import Threshold

DEFAULT_BUDGET = 512 << 20  # bytes of exposed tensors per group, both sides together


@dataclass
class Point:
    stage: str  # a landmark stage (export/diagnose/structure.py STAGES)
    layer: int | None
    name: str  # the stage, or the output's name for the head
    passed: bool
    scaled_error: float | None = None
    max_abs: float | None = None
    cosine: float | None = None
    row_cosine: float | None = None  # min over non-padded rows (tokens; per head for Q/K)
    n_nan: int = 0
    nodes: list[str] = field(default_factory=list)  # the candidate's nodes that produce it
    shape: list[int] | None = None  # the reference tensor's (the first one's for Q/K)
    note: str | None = None  # why it could not be compared

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Comparison:
    points: list[Point]
    complete: bool
    reason: str | None
    runs: int  # runs of each side
    group_layers: int  # layers per group after the first


def depth(key: Key) -> tuple[int, int]:
    layer = key_layer(key)
    if layer is None:  # the embeddings come first, the head last
        return (-1, 0) if key[0] == "embeddings" else (10**9, 0)
    return layer, STAGES.index(key[0])


def groups_after_first(keys: list[Key], per_group: int) -> list[list[Key]]:
    layers = sorted({layer for k in keys if (layer := key_layer(k)) is not None})
    chunks = [layers[i : i + per_group] for i in range(0, len(layers), per_group)]
    out = [[k for k in keys if key_layer(k) in chunk] for chunk in chunks]
    heads = [k for k in keys if k[0] == "head"]
    if heads:
        out = out[:-1] + [out[-1] + heads] if out else [heads]
    return out


def compare(
    ref,
    cand,
    feeds: dict[str, np.ndarray],
    threshold_of: Callable[[Key], Threshold],
    budget_bytes: int = DEFAULT_BUDGET,
    deadline: float | None = None,
) -> Comparison:
    """Every landmark both sides have, judged by threshold_of(key); stops between groups past `deadline`
    (time.monotonic() value), saying where."""
    shared = set(cand.keys())
    keys = sorted((k for k in ref.keys() if k in shared), key=depth)
    first_layer = min((k[1] for k in keys if k[0] not in ("embeddings", "head")), default=None)
    first = [k for k in keys if k[0] == "embeddings" or (k[0] != "head" and k[1] == first_layer)]
    rest = [k for k in keys if k not in first]
    out, per_layer = _run_group(ref, cand, first, feeds, threshold_of)
    n_layers = len({k[1] for k in rest if k[0] not in ("embeddings", "head")})
    per_group = max(1, min(n_layers, budget_bytes // max(1, per_layer)))
    runs = 1 if first else 0
    for group in groups_after_first(rest, per_group):
        if deadline is not None and time.monotonic() > deadline:
            done = max((p.layer for p in out if p.layer is not None), default=-1)
            return Comparison(out, False, f"time cap reached after layer {done}", runs, per_group)
        pts, _ = _run_group(ref, cand, group, feeds, threshold_of)
        out += pts
        runs += 1
    return Comparison(out, True, None, runs, per_group)


def _run_group(ref, cand, keys: list[Key], feeds, threshold_of) -> tuple[list[Point], int]:
    """The points of `keys`, and the bytes their layer tensors took on both sides."""
    if not keys:
        return [], 0
    r, c = ref.fetch(keys, feeds), cand.fetch(keys, feeds)
    mask = np.asarray(feeds["attention_mask"])
    points = [compare_point(k, r.get(k), c.get(k), mask, threshold_of(k), cand.nodes(k)) for k in keys]
    layer_bytes = sum(
        a.nbytes for side in (r, c) for k, arrays in side.items() if k[0] not in ("embeddings", "head") for a in arrays
    )
    return points, layer_bytes


def compare_point(
    key: Key,
    ref: list[np.ndarray] | None,
    got: list[np.ndarray] | None,
    mask: np.ndarray,
    t: Threshold,
    nodes: list[str],
) -> Point:
    stage, where = key
    layer = key_layer(key)
    name = str(where) if stage == "head" else stage
    if not ref or not got or len(ref) != len(got):
        return Point(stage, layer, name, True, nodes=nodes, note="not produced by both sides")
    stats = []
    for r, g in zip(ref, got, strict=True):
        a = aligned(g, r)
        if a is None:
            return Point(stage, layer, name, True, nodes=nodes, note=f"shapes differ: {got[0].shape} vs {r.shape}")
        rows = row_mask(name, r.shape, mask) if stage == "head" else token_rows(r.shape, mask)
        stats.append(error_stats(a.astype(np.float32), r.astype(np.float32), rows))
    scaled = max(s.scaled_error for s in stats)
    max_abs = max(s.max_abs for s in stats)
    cosine = min(s.cosine for s in stats)
    row_cosines = [s.row_cosine for s in stats if s.row_cosine is not None]
    row_cosine = min(row_cosines) if row_cosines else None
    n_nan = sum(s.n_nan for s in stats)
    passed = t.passes(max_abs, scaled, cosine, n_nan, row_cosine)
    return Point(stage, layer, name, passed, scaled, max_abs, cosine, row_cosine, n_nan, nodes, list(ref[0].shape))


def aligned(got: np.ndarray, ref: np.ndarray) -> np.ndarray | None:
    """`got` in `ref`'s layout: as it is, or with its last two axes swapped (a K kept transposed)."""
    if got.shape == ref.shape:
        return got
    if got.ndim >= 2 and np.swapaxes(got, -1, -2).shape == ref.shape:
        return np.swapaxes(got, -1, -2)
    return None


def token_rows(shape: tuple[int, ...], mask: np.ndarray) -> np.ndarray | None:
    """Non-padded rows of an intermediate tensor: [B', S, X] (B' = batch x choices) or [B', heads, S, Dh]."""
    m = mask.reshape(-1, mask.shape[-1]) != 0  # [B', S]
    if len(shape) == 3 and tuple(shape[:2]) == m.shape:
        return m
    if len(shape) == 4 and (shape[0], shape[2]) == m.shape:
        return np.broadcast_to(m[:, None, :], shape[:3])
    return None
