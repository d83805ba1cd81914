"""Where the layers of a pre-norm encoder (ModernBERT) are in an ONNX graph: the residual stream, walked.

In a pre-norm layer the normalisations sit inside the blocks (x + attn(norm(x)), then x + mlp(norm(x))), so
they do not bound the layers; the residual stream does. From the embeddings' normalisation (the first one
without a weight MatMul upstream; in a Llama-style model with no such normalisation, EuroBERT's, that first
norm is layer 0's own and the stream starts at its input, the embeddings) the walk follows the stream tensor x
through the Add that adds it an
attention branch (a Softmax, or a fused attention op, upstream of the other operand): its output is the layer's
attention_output; then through the Add that adds an FFN branch (a weight MatMul upstream, no Softmax): its
output is layer_output and the other operand ffn_output. It stops when no attention branch joins x; what
follows (the final norm, the head) gives the head landmarks: every graph output but the last layer's.
"""

from __future__ import annotations

import onnx

from export.diagnose.attention import attention_landmarks, region, weight_matmul
from export.diagnose.structure import FUSED_ATTENTION_OPS, PASS_THROUGH, Graph, Landmark, Structure, find_norms

ATTENTION_OPS = FUSED_ATTENTION_OPS | {"Softmax"}


def locate_pre(model: onnx.ModelProto) -> Structure:
    g = Graph(model)
    notes: list[str] = []
    landmarks: list[Landmark] = []
    regions: dict[int, list[int]] = {}
    embeddings = next((n for n in find_norms(g) if not _weights(g, region(g, n.inputs, set()))), None)
    if embeddings is None:
        return Structure([], 0, {}, ["no embeddings normalisation found (none without a weight MatMul upstream)"])
    x, k = _stream_start(g, embeddings), 0
    landmarks.append(Landmark("embeddings", None, (x,), (g.name(g.producer[x]) if x in g.producer else x,)))
    while (attn := _branch_add(g, x, attention=True)) is not None:
        mid = attn.output[0]
        ffn = _branch_add(g, mid, attention=False)
        if ffn is None:
            notes.append(f"layer {k}: no FFN residual Add after the attention block ({attn.name})")
            break
        out = ffn.output[0]
        regions[k] = sorted(region(g, [out], {x}))
        landmarks += attention_landmarks(g, k, {x}, regions[k], notes)
        landmarks.append(Landmark("attention_output", k, (mid,), (attn.name or mid,)))
        branch = next(t for t in ffn.input if not _same(g, t, mid))
        landmarks.append(Landmark("ffn_output", k, (branch,), (g.name(g.producer[branch]),)))
        landmarks.append(Landmark("layer_output", k, (out,), (ffn.name or out,)))
        x, k = out, k + 1
    for o in g.outputs:
        if o != x and o in g.producer:
            landmarks.append(Landmark("head", None, (o,), (g.name(g.producer[o]),)))
    return Structure(sorted(landmarks, key=lambda m: m.key), k, regions, notes)


def _stream_start(g: Graph, norm) -> str:
    """The embeddings' normalisation output, or, when no attention branch joins it there, the norm's input or a
    tensor it was cast from (a model without embeddings normalisation: the first norm is layer 0's)."""
    t = norm.inputs[0]
    candidates = [norm.output, t]
    while (n := g.node_of(t)) is not None and n.op_type in PASS_THROUGH:
        t = n.input[0]
        candidates.append(t)
    return next((c for c in candidates if _branch_add(g, c, attention=True) is not None), norm.output)


def _branch_add(g: Graph, x: str, attention: bool) -> onnx.NodeProto | None:
    """The residual Add consuming x (through Casts) whose other operand computes an attention branch (Softmax or
    a fused attention op upstream, back to x) or, with attention=False, an FFN branch (weight MatMul, no Softmax)."""
    for t in _forward_all(g, x):
        for i in g.consumers.get(t, []):
            n = g.nodes[i]
            if n.op_type != "Add" or len(n.input) != 2:
                continue
            others = [y for y in n.input if y != t]
            if len(others) != 1 or g.is_const(others[0]):
                continue
            branch = region(g, others, {x})
            softmax = any(g.nodes[i].op_type in ATTENTION_OPS for i in branch)
            if softmax if attention else (not softmax and _weights(g, branch)):
                return n
    return None


def _weights(g: Graph, nodes: set[int]) -> bool:
    """Some node of `nodes` is a MatMul with a constant (weight) operand."""
    return any(weight_matmul(g, i) for i in nodes)


def _forward_all(g: Graph, t: str) -> list[str]:
    """t and its single-consumer Cast / Identity successors."""
    out = [t]
    while (nxt := g.single_consumer(out[-1])) is not None and nxt.op_type in PASS_THROUGH:
        out.append(nxt.output[0])
    return out


def _same(g: Graph, t: str, target: str) -> bool:
    while t != target and (n := g.node_of(t)) is not None and n.op_type in PASS_THROUGH:
        t = n.input[0]
    return t == target
