"""The node where a divergent layer goes wrong: the first tensor, in graph order, that leaves the threshold.

In:  two ONNX sides whose tensor names match (a graph and its rewrite, its fp16 or quantized twin: the passes
     keep names), the region of the candidate graph to search (the divergent layer's nodes, or the nodes
     upstream of the embeddings or of a head output), feeds, the Threshold.
Out: {"node", "op", "tensor", "scaled_error", "row_cosine"} or None when no name-matched tensor there fails
     (names did not survive, or the error builds up without one tensor crossing the bound).
Cost: one run of each graph per chunk of tensors; a chunk holds what fits `budget_bytes` when every tensor is
as large as an attention-score tensor (B x heads x S x S), the largest a layer has.
"""

from __future__ import annotations

import numpy as np

from export.diagnose.divergence import aligned, token_rows
from export.diagnose.locate import upstream
from export.diagnose.sides import OnnxSide
from export.diagnose.structure import SHAPE_OPS
from export.compare import error_stats
from export.thresholds import Threshold

SKIP_OPS = SHAPE_OPS | {"Constant", "ConstantOfShape", "Range"}


def search_region(cand: OnnxSide, stage: str, layer: int | None, name: str) -> list[int]:
    """Candidate node indices to search for a divergence found at (stage, layer)."""
    if layer is not None:
        return cand.structure.regions.get(layer, [])
    lm = cand.landmarks.get(("head", name) if stage == "head" else ("embeddings", None))
    if lm is None:
        return []
    stops = [m.tensors[0] for m in cand.structure.landmarks if m.stage == "layer_output"] if stage == "head" else []
    return upstream(cand.model, list(lm.tensors), stops[-1:])


def first_failing_node(ref: OnnxSide, cand: OnnxSide, region: list[int], feeds: dict[str, np.ndarray],
                       t: Threshold, budget_bytes: int, largest_tensor_bytes: int) -> dict | None:
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
    for start in range(0, len(names), per_chunk):
        chunk = names[start:start + per_chunk]
        r, c = ref.tensors(chunk, feeds), cand.tensors(chunk, feeds)
        for name in chunk:
            found = _judge(name, r[name], c[name], mask, t)
            if found is not None:
                node = producer[name]
                return {"node": node.name or f"{node.op_type} producing {name}", "op": node.op_type, "tensor": name,
                        **found}
    return None


def _judge(name: str, r: np.ndarray, g: np.ndarray, mask: np.ndarray, t: Threshold) -> dict | None:
    """The statistics of a failing float tensor, None when it passes or cannot be compared."""
    if not (np.issubdtype(r.dtype, np.floating) and np.issubdtype(g.dtype, np.floating)):
        return None
    g = aligned(g, r)
    if g is None or r.size == 0:
        return None
    s = error_stats(g.astype(np.float32), r.astype(np.float32), token_rows(r.shape, mask))
    if t.passes(s.max_abs, s.scaled_error, s.cosine, s.n_nan, s.row_cosine):
        return None
    out = {"scaled_error": s.scaled_error}
    if s.row_cosine is not None:
        out["row_cosine"] = s.row_cosine
    return out
