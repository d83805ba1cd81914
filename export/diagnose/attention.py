"""The landmarks every encoder layer has, whatever surrounds it: the attention block's inputs and rotary outputs.

In: a `Graph` (export/diagnose/structure.py) and a layer's node region. Out: the rotary_output landmark (the two
inputs of the attention-scores MatMul, Cast / Transpose / scalar scaling peeled off) and attention_input (the Q
and K projections, MatMul + bias, or the one fused QKV projection both are sliced from). Also the walks the
skeleton finders share (`region`, `upstream`, `weight_matmul`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import onnx

from export.diagnose.structure import MATMUL_OPS, PASS_THROUGH, SHAPE_OPS, Graph, Landmark

INTEGER_MATMUL_OPS = frozenset({"MatMulInteger"})  # int32 accumulators: the product only after their scales
SCORES_DEPTH = 8  # ops between the scores MatMul and its Softmax (scale, mask Add, Where, Casts): a handful


def upstream(model: onnx.ModelProto, tensors: list[str], stops: Iterable[str] = ()) -> list[int]:
    """Node indices (graph order) computing `tensors`, walking back to graph inputs, constants or `stops`."""
    return sorted(region(Graph(model), tensors, set(stops)))


def region(g: Graph, starts, stop: set[str]) -> set[int]:
    """Node indices reached walking back from `starts`, not crossing `stop`, graph inputs, constants or Shape."""
    seen_t: set[str] = set()
    nodes: set[int] = set()
    q = deque(starts)
    while q:
        t = q.popleft()
        if t in seen_t or t in stop or t in g.inputs or g.is_const(t):
            continue
        seen_t.add(t)
        i = g.producer.get(t)
        if i is None or i in nodes or g.nodes[i].op_type in SHAPE_OPS:
            continue
        nodes.add(i)
        q.extend(x for x in g.nodes[i].input if x)
    return nodes


def weight_matmul(g: Graph, i: int) -> bool:
    n = g.nodes[i]
    return n.op_type in MATMUL_OPS and any(x and g.is_const(x) for x in n.input)


def attention_landmarks(g: Graph, k: int, stops: set[str], region: list[int], notes: list[str]) -> list[Landmark]:
    """rotary_output (the scores MatMul's inputs) and attention_input (the Q and K projections, or the one fused
    QKV projection both come from) of layer k."""
    scores = _scores_matmul(g, region)
    if scores is None:
        notes.append(
            f"layer {k}: no attention-scores MatMul before a Softmax (a fused attention op?): "
            "attention_input and rotary_output not located"
        )
        return []
    rotated = (_peel(g, g.nodes[scores].input[0]), _peel(g, g.nodes[scores].input[1], transpose=True))
    out = [Landmark("rotary_output", k, rotated, tuple(producer_name(g, t) for t in rotated))]
    q, kp = (_projection(g, t, stops) for t in rotated)  # (tensor, node) of the Q and of the K projection
    if q is None or kp is None:
        notes.append(f"layer {k}: the Q/K projections (MatMul with a weight) before the rotary were not found")
    elif q == kp:  # one fused QKV projection (ModernBERT's Wqkv)
        out.append(Landmark("attention_input", k, (q[0],), (q[1],)))
    else:
        out.append(Landmark("attention_input", k, (q[0], kp[0]), (q[1], kp[1])))
    return out


def producer_name(g: Graph, t: str) -> str:
    return g.name(g.producer[t]) if t in g.producer else t


def _scores_matmul(g: Graph, region: list[int]) -> int | None:
    """The MatMul feeding the block's Softmax through a few elementwise ops (scale, mask, casts)."""
    members = set(region)
    for i in region:
        if g.nodes[i].op_type != "Softmax":
            continue
        q, seen = deque([(g.nodes[i].input[0], 0)]), set()
        while q:
            t, depth = q.popleft()
            j = g.producer.get(t)
            if j is None or j in seen or j not in members or depth > SCORES_DEPTH:
                continue
            seen.add(j)
            if g.nodes[j].op_type in MATMUL_OPS and not weight_matmul(g, j):
                return j
            q.extend((x, depth + 1) for x in g.nodes[j].input if x and not g.is_const(x))
    return None


def _peel(g: Graph, t: str, transpose: bool = False) -> str:
    """Through Cast/Identity, a scaling by a constant, and (for K) the transpose of its last two axes."""
    while (n := g.node_of(t)) is not None:
        data = [x for x in n.input if x and not g.is_const(x)]
        if n.op_type in PASS_THROUGH:
            t = n.input[0]
        elif len(data) == 1 and (n.op_type == "Mul" or n.op_type == "Div" and n.input[0] == data[0]):
            t = data[0]
        elif transpose and n.op_type == "Transpose" and _swaps_last_two(n):
            t, transpose = n.input[0], False
        else:
            return t
    return t


def _swaps_last_two(n: onnx.NodeProto) -> bool:
    perm = next((list(a.ints) for a in n.attribute if a.name == "perm"), None)
    return (
        perm is not None
        and len(perm) >= 2
        and perm[-2:] == [len(perm) - 1, len(perm) - 2]
        and perm[:-2] == list(range(len(perm) - 2))
    )


def _projection(g: Graph, t: str, stops: set[str]) -> tuple[str, str] | None:
    """The nearest weight MatMul upstream of `t` (and its bias Add): (its output, its node name). A node with
    several outputs (RoformerRotary: y_i from x_i) is entered through the input that matches the output."""
    n = g.node_of(t)
    if n is None:
        return None
    starts = [n.input[list(n.output).index(t)]] if len(n.output) > 1 and len(n.input) >= len(n.output) else [t]
    q, seen = deque(starts), set()
    while q:
        x = q.popleft()
        j = g.producer.get(x)
        if x in seen or x in stops or j is None or g.is_const(x) or g.nodes[j].op_type in SHAPE_OPS:
            continue
        seen.add(x)
        if weight_matmul(g, j):
            return _with_bias(g, g.nodes[j].output[0]), g.name(j)
        q.extend(y for y in g.nodes[j].input if y)
    return None


def _with_bias(g: Graph, out: str) -> str:
    """A projection's output after its bias Add (through dtype Casts on the way), or as it is. An integer MatMul
    (ONNX Runtime's dynamic quantization, as in the INT8 CPU twin: MatMulInteger -> Cast -> Mul by the scales)
    is followed to its dequantized product first: its own output is the int32 accumulator."""
    t, nxt = _through_casts(g, out)
    producer = g.node_of(out)
    if producer is not None and producer.op_type in INTEGER_MATMUL_OPS:
        if nxt is None or nxt.op_type not in ("Mul", "DequantizeLinear"):
            return out
        out = nxt.output[0]
        t, nxt = _through_casts(g, out)
    if nxt is not None and nxt.op_type == "Add" and any(g.is_const(y) for y in nxt.input if y != t):
        return nxt.output[0]
    return out


def _through_casts(g: Graph, t: str):
    """(the tensor after dtype Casts from `t`, the single consumer there or None)."""
    while (nxt := g.single_consumer(t)) is not None and nxt.op_type in PASS_THROUGH:
        t = nxt.output[0]
    return t, nxt
