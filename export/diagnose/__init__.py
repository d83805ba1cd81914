"""Where does a graph diverge? Layer-by-layer comparison of a candidate graph with a reference, on the CPU.

    from export.diagnose import diagnose, diagnose_model
    d = diagnose("model.onnx", "model.rope-plugin.fp16.onnx", feeds)      # two graphs of one model
    d = diagnose_model(torch_model, "model", "model.rope-plugin.onnx", feeds)  # a graph against PyTorch
    d.first_divergence  # None, or {"stage": "embeddings" | "layer" | "head", "layer": 3 | None, "point", "nodes", ...}

Graphs are paths, export.validate.OnnxFile, or ModelProtos holding their weights; feeds are numpy inputs
(export.validate.make_inputs). Both sides are run on the same feeds with their RoFormer landmarks exposed
(export/diagnose/structure.py: embeddings, then per layer the Q/K projections, the rotary output, the
attention output, the FFN output and the layer output, then head outputs), located from each graph's structure,
so names need not survive; each landmark is judged by the pass rule of export/report/thresholds.py on the statistics
of export/report/compare.py (scaled error, per-row cosine over non-padded tokens). The first landmark in depth order
that fails is the first divergence; when the reference is an ONNX graph whose tensor names the candidate kept,
the search continues between the last landmarks that agreed and that one for the first tensor, in graph
order, that fails, and names its node.
The CLI is `python -m export.diagnose` (export/diagnose/__main__.py); rendering in export/diagnose/render.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from export.diagnose.divergence import DEFAULT_BUDGET, Point, compare
from export.diagnose.nodes import first_failing_node, search_region
from export.diagnose.sides import OnnxSide, TorchSide
from export.diagnose.structure import Key
from export.errors import UsageError
from export.report.graph_precision import precision_of
from export.report.schema import PRECISIONS
from export.report.thresholds import Threshold, Thresholds


@dataclass
class Diagnosis:
    reference: str
    candidate: str
    precision: str
    threshold: Threshold  # the one landmarks of the hidden state are judged by (head outputs: their own)
    points: list[Point]
    first_divergence: dict | None
    layers: int
    complete: bool = True
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    cost: dict = field(default_factory=dict)
    seconds: float = 0.0
    shape: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "reference": self.reference,
            "candidate": self.candidate,
            **self.shape,
            "precision": self.precision,
            "thresholds": self.threshold.to_dict(),
            "layers": self.layers,
            "first_divergence": self.first_divergence,
            "points": [p.to_dict() for p in self.points],
            "complete": self.complete,
            "reason": self.reason,
            "notes": self.notes,
            "cost": self.cost,
            "seconds": round(self.seconds, 2),
        }


def graph_precision(model: onnx.ModelProto) -> str:
    """The precision whose thresholds judge the graph, read from the graph itself (export.report.graph_precision,
    as the verdict reads it: int8 / fp8 for a quantized graph, the INT8 CPU twin included, then bf16, fp16, fp32);
    UsageError for a graph that computes in none of them (pass --precision)."""
    found = precision_of(model)
    found = "fp32" if found.startswith("fp32 holding") else found  # low-precision tensors, no low-precision math
    if found not in PRECISIONS:
        raise UsageError(f"the candidate graph computes in {found}, which has no thresholds; pass --precision")
    return found


def diagnose(
    ref_graph,
    cand_graph,
    feeds: dict[str, np.ndarray],
    thresholds: Thresholds | None = None,
    precision: str | None = None,
    graph_key: str = "*",
    budget_bytes: int = DEFAULT_BUDGET,
    deadline: float | None = None,
) -> Diagnosis:
    """Two ONNX graphs of one model. precision: the candidate's (default: read from its dtypes)."""
    cand = OnnxSide(cand_graph, _label(cand_graph))
    ref = OnnxSide(ref_graph, _label(ref_graph))
    return _diagnose(
        ref,
        cand,
        feeds,
        thresholds,
        precision or graph_precision(cand.model),
        graph_key,
        budget_bytes,
        deadline,
        names=ref,
    )


def diagnose_model(
    model,
    task: str,
    cand_graph,
    feeds: dict[str, np.ndarray],
    thresholds: Thresholds | None = None,
    precision: str | None = None,
    graph_key: str = "*",
    name_reference=None,
    budget_bytes: int = DEFAULT_BUDGET,
    deadline: float | None = None,
) -> Diagnosis:
    """A graph against the PyTorch model (fp32, eval). name_reference: an ONNX graph that matches PyTorch and
    shares the candidate's tensor names (the build's plain export), for the search of the node."""
    cand = OnnxSide(cand_graph, _label(cand_graph))
    names = OnnxSide(name_reference, _label(name_reference)) if name_reference is not None else None
    return _diagnose(
        TorchSide(model, task),
        cand,
        feeds,
        thresholds,
        precision or graph_precision(cand.model),
        graph_key,
        budget_bytes,
        deadline,
        names=names,
    )


def _label(graph) -> str:
    if isinstance(graph, onnx.ModelProto):
        return graph.graph.name or "in-memory graph"
    return str(getattr(graph, "path", graph))


def _diagnose(
    ref, cand: OnnxSide, feeds, thresholds, precision, graph_key, budget_bytes, deadline, names: OnnxSide | None
) -> Diagnosis:
    t0 = time.monotonic()
    thresholds = thresholds or Thresholds.defaults()

    def threshold_of(key: Key) -> Threshold:
        return thresholds.lookup(precision, graph_key, str(key[1]) if key[0] == "head" else "last_hidden_state")

    result = compare(ref, cand, feeds, threshold_of, budget_bytes, deadline)
    notes = list(cand.structure.notes) + [f"{p.stage} {p.layer}: {p.note}" for p in result.points if p.note]
    if ref.layers != cand.layers:
        notes.append(f"the reference has {ref.layers} layers, the candidate {cand.layers}")
    first = next((p for p in result.points if not p.passed), None)
    divergence = None
    if first is not None:
        key = ("head", first.name) if first.stage == "head" else (first.stage, first.layer)
        divergence = _first_divergence(first, cand, names, feeds, threshold_of(key), budget_bytes, result.points)
    mask = np.asarray(feeds["attention_mask"])
    shape = {
        "batch": int(mask.shape[0]),
        "seq": int(mask.shape[-1]),
        "padded_rows": int((mask == 0).any(-1).sum()),
        **({"choices": int(mask.shape[1])} if mask.ndim == 3 else {}),
    }
    return Diagnosis(
        ref.label,
        cand.label,
        precision,
        threshold_of(("layer_output", 0)),
        result.points,
        divergence,
        cand.layers,
        result.complete,
        result.reason,
        notes,
        {"runs_per_side": result.runs, "layers_per_group": result.group_layers, "budget_bytes": budget_bytes},
        time.monotonic() - t0,
        shape,
    )


def _first_divergence(
    p: Point, cand: OnnxSide, names: OnnxSide | None, feeds, t: Threshold, budget_bytes: int, points: list[Point]
) -> dict:
    stage = "embeddings" if p.stage == "embeddings" else "head" if p.stage == "head" else "layer"
    node = None
    if names is not None:
        agreed = [(q.stage, q.name if q.stage == "head" else q.layer) for q in points if q.passed]
        region = search_region(cand, ("head", p.name) if p.stage == "head" else (p.stage, p.layer), agreed)
        node = first_failing_node(
            names, cand, region, feeds, t, budget_bytes, _largest_tensor(feeds, points, cand), p.scaled_error or 0.0
        )
    out = {
        "stage": stage,
        "layer": p.layer,
        "point": p.name,
        "nodes": [node["node"]] if node else p.nodes,
        "landmark_nodes": p.nodes,
        "scaled_error": p.scaled_error,
        "first_node": node,
    }
    if p.row_cosine is not None:
        out["row_cosine"] = p.row_cosine
    return out


def _largest_tensor(feeds, points: list[Point], cand: OnnxSide) -> int:
    """Bytes of the largest tensor of a layer: an attention-score tensor B' x heads x S x S, or the FFN's
    B' x S x 4H (heads and H read from the landmarks' shapes; 64 heads and H = 4096 when they are unknown)."""
    mask = np.asarray(feeds["attention_mask"])
    rows, s = int(np.prod(mask.shape[:-1])), int(mask.shape[-1])
    heads = next((p.shape[1] for p in points if p.stage == "rotary_output" and p.shape and len(p.shape) == 4), 64)
    hidden = next((p.shape[-1] for p in points if p.stage == "layer_output" and p.shape), 4096)
    return 4 * rows * max(heads * s * s, s * 4 * hidden)
