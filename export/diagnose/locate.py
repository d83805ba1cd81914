"""locate(model) -> Structure: the RoFormer landmarks of an ONNX graph (rules in export/diagnose/structure.py)."""

from __future__ import annotations

from collections import deque

import onnx

from export.diagnose.structure import (
    FUSED_ATTENTION_OPS,
    MATMUL_OPS,
    PASS_THROUGH,
    SHAPE_OPS,
    Graph,
    Landmark,
    Norm,
    Structure,
    find_norms,
)

INTEGER_MATMUL_OPS = frozenset({"MatMulInteger"})  # int32 accumulators: the product only after their scales
SCORES_DEPTH = 8  # ops between the scores MatMul and its Softmax (scale, mask Add, Where, Casts): a handful


def locate(model: onnx.ModelProto) -> Structure:
    g = Graph(model)
    norms = find_norms(g)
    stops = {n.output for n in norms}
    kinds = [_kind(g, norm, _region(g, norm.inputs, stops - {norm.output})) for norm in norms]
    notes: list[str] = []
    landmarks: list[Landmark] = []
    regions: dict[int, list[int]] = {}
    embeddings = [n for n, k in zip(norms, kinds, strict=True) if k == "embeddings"]
    if embeddings:
        e = embeddings[-1]
        landmarks.append(Landmark("embeddings", None, (e.output,), (g.name(e.index),)))
    else:
        notes.append("no embeddings LayerNorm found (no normalisation without a weight MatMul upstream)")
    layers = _pair_layers(norms, kinds, notes)
    for k, (attn, ffn) in enumerate(layers):
        regions[k] = sorted(
            _region(g, attn.inputs, stops - {attn.output})
            | _region(g, ffn.inputs, stops - {ffn.output})
            | _norm_nodes(g, attn)
            | _norm_nodes(g, ffn)
        )
        landmarks += _layer_landmarks(g, k, attn, ffn, stops, regions[k], notes)
    last = layers[-1][1].output if layers else None
    for out in g.outputs:
        if out != last and out in g.producer:
            landmarks.append(Landmark("head", None, (out,), (g.name(g.producer[out]),)))
    return Structure(sorted(landmarks, key=lambda m: m.key), len(layers), regions, notes)


def upstream(model: onnx.ModelProto, tensors: list[str], stops: list[str] = ()) -> list[int]:
    """Node indices (graph order) computing `tensors`, walking back to graph inputs, constants or `stops`."""
    return sorted(_region(Graph(model), tensors, set(stops)))


def _region(g: Graph, starts, stop: set[str]) -> set[int]:
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


def _norm_nodes(g: Graph, norm: Norm) -> set[int]:
    return _region(g, [norm.output], set(norm.inputs)) | {norm.index}


def _weight_matmul(g: Graph, i: int) -> bool:
    n = g.nodes[i]
    return n.op_type in MATMUL_OPS and any(x and g.is_const(x) for x in n.input)


def _kind(g: Graph, norm: Norm, region: set[int]) -> str:
    ops = {g.nodes[i].op_type for i in region}
    if "Softmax" in ops or ops & FUSED_ATTENTION_OPS:
        return "attention"
    if any(_weight_matmul(g, i) for i in region):
        return "matmul"
    return "embeddings"


def _pair_layers(norms: list[Norm], kinds: list[str], notes: list[str]) -> list[tuple[Norm, Norm]]:
    """(attention LN, FFN LN) per layer, in order; an LN with a MatMul upstream that closes no attention block
    is the head's (e.g. the masked-LM transform)."""
    layers, open_attn = [], None
    for norm, kind in zip(norms, kinds, strict=True):
        if kind == "attention":
            if open_attn is not None:
                notes.append(f"attention block at node {open_attn.index} has no FFN LayerNorm after it")
            open_attn = norm
        elif kind == "matmul" and open_attn is not None:
            layers.append((open_attn, norm))
            open_attn = None
        elif kind == "embeddings" and layers:
            notes.append(
                f"a normalisation without weights after layer {len(layers) - 1} (node {norm.index}) is ignored"
            )
    return layers


def _layer_landmarks(
    g: Graph, k: int, attn: Norm, ffn: Norm, stops: set[str], region: list[int], notes: list[str]
) -> list[Landmark]:
    out = []
    scores = _scores_matmul(g, region)
    if scores is None:
        notes.append(
            f"layer {k}: no attention-scores MatMul before a Softmax (a fused attention op?): "
            "attention_input and rotary_output not located"
        )
    else:
        rotated = (_peel(g, g.nodes[scores].input[0]), _peel(g, g.nodes[scores].input[1], transpose=True))
        out.append(Landmark("rotary_output", k, rotated, tuple(_producer_name(g, t) for t in rotated)))
        projections = [_projection(g, t, stops) for t in rotated]
        if all(projections) and projections[0] != projections[1]:
            out.append(
                Landmark("attention_input", k, tuple(p[0] for p in projections), tuple(p[1] for p in projections))
            )
        else:
            notes.append(f"layer {k}: the Q/K projections (MatMul with a weight) before the rotary were not found")
    out.append(Landmark("attention_output", k, (attn.output,), (g.name(attn.index),)))
    ffn_out = _residual_branch(g, ffn, attn.output)
    if ffn_out is None:
        notes.append(f"layer {k}: the FFN output (the residual Add's other operand) was not found")
    else:
        out.append(Landmark("ffn_output", k, (ffn_out,), (_producer_name(g, ffn_out),)))
    out.append(Landmark("layer_output", k, (ffn.output,), (g.name(ffn.index),)))
    return out


def _producer_name(g: Graph, t: str) -> str:
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
            if g.nodes[j].op_type in MATMUL_OPS and not _weight_matmul(g, j):
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
        if _weight_matmul(g, j):
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


def _residual_branch(g: Graph, norm: Norm, residual: str) -> str | None:
    """The operand of the LN's residual Add that is not the residual stream (`residual`, maybe through Casts)."""
    if len(norm.inputs) == 2:  # SkipLayerNormalization(input, skip)
        operands = list(norm.inputs)
    else:
        add = g.node_of(norm.inputs[0])
        while add is not None and add.op_type in PASS_THROUGH:  # Casts before a decomposed norm
            add = g.node_of(add.input[0])
        if add is None or add.op_type != "Add" or len(add.input) != 2:
            return None
        operands = list(add.input)
    others = [x for x in operands if not _is_same_values(g, x, residual)]
    return others[0] if len(others) == 1 else None


def _is_same_values(g: Graph, t: str, target: str) -> bool:
    while t != target and (n := g.node_of(t)) is not None and n.op_type in PASS_THROUGH:
        t = n.input[0]
    return t == target
