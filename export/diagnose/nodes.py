"""The node where a divergent layer goes wrong: the first tensor, in graph order, that leaves the threshold.

In:  two ONNX sides whose tensor names match (a graph and its rewrite, its fp16 or quantized twin: the passes
     keep names), the region of the candidate graph to search (the nodes between the last landmarks that still
     agree and the first that does not), feeds, the Threshold.
Out: {"node", "op", "tensor", "scaled_error", "row_cosine"} or None when no name-matched tensor there fails
     (names did not survive, or the error builds up without one tensor crossing the bound). The node is the
     first, in graph order, whose tensor fails with at least SIZE of the landmark's scaled error: a small
     failure on the way (a Softmax amplifying rounding from upstream) is passed over for the node where the
     divergence appears at its size; when none reaches it, the first failing tensor.
Cost: one run of each graph per chunk of tensors; a chunk holds what fits `budget_bytes` when every tensor is
as large as an attention-score tensor (B x heads x S x S), the largest a layer has.
"""

from __future__ import annotations

import numpy as np

from export.diagnose.attention import upstream
from export.diagnose.divergence import aligned, token_rows
from export.diagnose.sides import OnnxSide
from export.diagnose.structure import SHAPE_OPS
from export.report.compare import error_stats
from export.report.thresholds import Threshold

SKIP_OPS = SHAPE_OPS | {"Constant", "ConstantOfShape", "Range"}
SIZE = 0.1  # of the landmark's scaled error


def search_region(cand: OnnxSide, key, passed: list) -> list[int]:
    """Candidate node indices between the landmarks that still agreed (`passed`: keys, in depth order) and the
    first that does not (`key`): the nodes that made the difference, in graph order."""
    lm = cand.landmarks.get(key)
    if lm is None:
        return []
    stops = [t for k in passed if k in cand.landmarks for t in cand.landmarks[k].tensors]
    return upstream(cand.model, list(lm.tensors), stops)


def first_failing_node(
    ref: OnnxSide,
    cand: OnnxSide,
    region: list[int],
    feeds: dict[str, np.ndarray],
    t: Threshold,
    budget_bytes: int,
    largest_tensor_bytes: int,
    landmark_error: float = 0.0,
) -> dict | None:
    known = {o for n in ref.model.graph.node for o in n.output} | {i.name for i in ref.model.graph.input}
    names, producer = [], {}
    for i in region:
        node = cand.model.graph.node[i]
        if node.op_type in SKIP_OPS:
            continue
        for o in node.output:
            if o and o in known and o not in producer:
                names.append(o)
                producer[o] = node
    per_chunk = max(1, budget_bytes // max(1, 2 * largest_tensor_bytes))
    mask = np.asarray(feeds["attention_mask"])
    first = None
    for start in range(0, len(names), per_chunk):
        chunk = names[start : start + per_chunk]
        r, c = ref.tensors(chunk, feeds), cand.tensors(chunk, feeds)
        for name in chunk:
            found = _judge(name, r[name], c[name], mask, t)
            if found is None:
                continue
            node = producer[name]
            found = {
                "node": node.name or f"{node.op_type} producing {name}",
                "op": node.op_type,
                "tensor": name,
                **found,
            }
            if found["scaled_error"] >= SIZE * landmark_error:
                return found
            first = first or found
    return first


def _judge(name: str, r: np.ndarray, g: np.ndarray, mask: np.ndarray, t: Threshold) -> dict | None:
    """The statistics of a failing float tensor, None when it passes or cannot be compared."""
    if not (np.issubdtype(r.dtype, np.floating) and np.issubdtype(g.dtype, np.floating)):
        return None
    a = aligned(g, r)
    if a is None or r.size == 0:
        return None
    s = error_stats(a.astype(np.float32), r.astype(np.float32), token_rows(r.shape, mask))
    if t.passes(s.max_abs, s.scaled_error, s.cosine, s.n_nan, s.row_cosine):
        return None
    out = {"scaled_error": s.scaled_error}
    if s.row_cosine is not None:
        out["row_cosine"] = s.row_cosine
    return out
