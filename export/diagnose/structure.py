"""Where an encoder's layers are in an ONNX graph, found from its structure (names need not survive).

In:  a ModelProto (its weights are not read: load it with load_external_data=False).
Out: `Structure`: the landmark tensors, in order of depth, and the nodes of each layer.

A post-norm encoder (RoFormer, BERT: the family's LayerMap.norm) is: embeddings -> LayerNorm, then per layer
  attention:  x -> Q/K projections (MatMul + bias) -> rotary -> scores MatMul -> Softmax -> ... -> Add(., x) -> LN
  FFN:        a -> MatMul -> GELU -> MatMul (the FFN output) -> Add(., a) -> LN (the layer output).
So the graph's normalisations, in topological order, are the skeleton: the one with no weight MatMul
upstream is the embeddings', one with a Softmax since the previous normalisation closes an attention
block, the next one with a MatMul closes the FFN and with it the layer; a normalisation after the last
layer belongs to the head. Normalisations are LayerNormalization (or ORT's Skip/Simplified variants, RMS)
or the decomposed form ReduceMean -> Sub -> ... -> Div -> Mul(scale) -> Add(bias); ORT's EmbedLayerNormalization
is the embeddings' normalisation fused with their lookups.

Per layer the landmarks are (stage names as in STAGES):
- attention_input: the Q and K projections (MatMul + bias output, [B, S, H]), what enters the rotary;
- rotary_output: the two inputs of the attention-scores MatMul, Cast / Transpose / scalar scaling peeled
  off ([B, heads, S, Dh]), whatever computes the rotation (decomposed ops, RoformerRotary, RotaryEmbedding);
- attention_output: the attention block's LayerNorm output; ffn_output: the FFN's second MatMul (+ bias),
  the residual Add's other operand; layer_output: the layer's closing LayerNorm output.
A pre-norm encoder (ModernBERT) has the same landmarks, found by walking its residual stream instead
(export/diagnose/prenorm.py): attention_output is the stream after the attention block's Add, layer_output after
the FFN's; the final norm's output is a head landmark. A landmark that cannot be found is left out with a note;
pairing (export.diagnose.divergence) compares what both graphs have.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

NORM_OPS = frozenset(
    {
        "LayerNormalization",
        "SkipLayerNormalization",
        "SimplifiedLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "RMSNormalization",
        "EmbedLayerNormalization",  # ONNX Runtime's fused embeddings + LN (the INT8 CPU twin): output 0 is the LN's
    }
)
MATMUL_OPS = frozenset({"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "FusedMatMul"})
FUSED_ATTENTION_OPS = frozenset({"Attention", "MultiHeadAttention", "GroupQueryAttention"})
PASS_THROUGH = frozenset({"Cast", "Identity"})  # same values, maybe another dtype
SHAPE_OPS = frozenset({"Shape", "Size"})  # their outputs carry no values of the tensor: never walked through
STAGES = ("embeddings", "attention_input", "rotary_output", "attention_output", "ffn_output", "layer_output", "head")
# A landmark on either side: (stage, where): the layer of a per-layer stage, the output's name for "head", None for
# "embeddings".
Key = tuple[str, int | str | None]


def key_layer(key: Key) -> int | None:
    """The layer of a per-layer landmark's key; None for the embeddings' and the head's."""
    stage, where = key
    return where if isinstance(where, int) and stage not in ("embeddings", "head") else None


@dataclass(frozen=True)
class Landmark:
    stage: str  # one of STAGES
    layer: int | None  # 0-based, as in encoder.layer.<i>; None for embeddings and head
    tensors: tuple[str, ...]  # value names (Q and K for the attention stages, else one)
    nodes: tuple[str, ...]  # the nodes that produce them

    @property
    def key(self) -> tuple[int, int]:
        """Depth order: embeddings, then each layer's stages in order, then the head."""
        layer = (
            -1 if self.layer is None and self.stage == "embeddings" else (10**9 if self.layer is None else self.layer)
        )
        return layer, STAGES.index(self.stage)


@dataclass
class Structure:
    landmarks: list[Landmark]
    layers: int
    regions: dict[int, list[int]] = field(default_factory=dict)  # layer -> node indices between its input and output
    notes: list[str] = field(default_factory=list)  # what could not be located, and why


class Graph:
    """Producer / consumer indexes over one GraphProto (main graph only)."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.nodes = list(g.node)
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for name in n.input:
                if name:
                    self.consumers.setdefault(name, []).append(i)
        self.inits = {t.name for t in g.initializer} | {i.name for i in g.sparse_initializer}
        self.inputs = {i.name for i in g.input}
        self.outputs = [o.name for o in g.output]
        self._const: dict[str, bool] = {}

    def node_of(self, tensor: str) -> onnx.NodeProto | None:
        i = self.producer.get(tensor)
        return None if i is None else self.nodes[i]

    def name(self, i: int) -> str:
        n = self.nodes[i]
        return n.name or f"{n.op_type}#{i}"

    def is_const(self, tensor: str, depth: int = 0) -> bool:
        """An initializer, or computed only from constants (Cast, DequantizeLinear, Transpose of a weight)."""
        if tensor in self._const:
            return self._const[tensor]
        if tensor in self.inits:
            return True
        node = self.node_of(tensor)
        ok = (
            node is not None
            and depth < 8
            and (
                node.op_type == "Constant"
                or (bool(node.input) and all(not x or self.is_const(x, depth + 1) for x in node.input))
            )
        )
        self._const[tensor] = ok
        return ok

    def single_consumer(self, tensor: str) -> onnx.NodeProto | None:
        c = self.consumers.get(tensor, [])
        return self.nodes[c[0]] if len(c) == 1 and tensor not in self.outputs else None


@dataclass(frozen=True)
class Norm:
    index: int  # node index of its last node (the LN itself, or the bias Add of a decomposed one)
    inputs: tuple[str, ...]  # data inputs (x; x and skip for SkipLayerNormalization)
    output: str
    first: int  # node index where it starts (== index for one LN node)


def find_norms(g: Graph) -> list[Norm]:
    """Every normalisation, in topological order: LN-family nodes and decomposed ReduceMean/Sub/.../Add."""
    norms = []
    for i, n in enumerate(g.nodes):
        if n.op_type in NORM_OPS:
            data = tuple(x for x in n.input[: 2 if n.op_type.startswith("Skip") else 1] if x)
            norms.append(Norm(i, data, n.output[0], i))
        elif n.op_type == "ReduceMean":
            norm = _decomposed_norm(g, i) or _decomposed_rms(g, i)
            if norm is not None:
                norms.append(norm)
    return sorted(norms, key=lambda m: m.index)


def _decomposed_norm(g: Graph, i: int) -> Norm | None:
    """ReduceMean(x) -> Sub(x, mean) -> Div/Mul (normalise) -> Mul(const) -> Add(const), or None; dtype Casts
    may sit between any two of them."""
    x = g.nodes[i].input[0]
    mean = _forward(g, g.nodes[i].output[0])
    subs = [g.nodes[j] for j in g.consumers.get(mean, []) if g.nodes[j].op_type == "Sub" and x in g.nodes[j].input]
    if not subs:
        return None
    d = _forward(g, subs[0].output[0])
    scaled = [
        g.nodes[j]
        for j in g.consumers.get(d, [])
        if g.nodes[j].op_type in ("Div", "Mul") and not all(t == d for t in g.nodes[j].input)
    ]  # Mul(d, d) is the variance, not the scaling
    if not scaled:
        return None
    out = _forward(g, scaled[0].output[0])
    while (
        (nxt := g.single_consumer(out)) is not None
        and nxt.op_type in ("Mul", "Add")
        and any(g.is_const(t) for t in nxt.input if t != out)
    ):
        out = _forward(g, nxt.output[0])
    return Norm(g.producer[out], (x,), out, i)


def _decomposed_rms(g: Graph, i: int) -> Norm | None:
    """ReduceMean(Pow(x, 2) or Mul(x, x)) -> Add(eps) -> Sqrt -> Reciprocal (or Div(1, .)) -> Mul(x, .) (or
    Div(x, sqrt)) -> Mul(scale), or None; dtype Casts may sit between them. x is taken back through Casts."""
    square = g.node_of(g.nodes[i].input[0])
    if square is None or square.op_type not in ("Pow", "Mul"):
        return None
    x = square.input[0]
    squares = square.input[1] == x if square.op_type == "Mul" else g.is_const(square.input[1])
    if not squares:
        return None
    chain = [_forward(g, g.nodes[i].output[0])]
    for op in ("Add", "Sqrt"):
        nxt = g.single_consumer(chain[-1])
        if nxt is None or nxt.op_type != op or (op == "Add" and not any(g.is_const(t) for t in nxt.input)):
            return None
        chain.append(_forward(g, nxt.output[0]))
    nxt = g.single_consumer(chain[-1])
    inverse = nxt is not None and (nxt.op_type == "Reciprocal" or (nxt.op_type == "Div" and g.is_const(nxt.input[0])))
    if nxt is not None and inverse:
        nxt = g.single_consumer(_forward(g, nxt.output[0]))
        scaled = nxt is not None and nxt.op_type == "Mul" and _back(g, x) in {_back(g, t) for t in nxt.input}
    else:
        scaled = nxt is not None and nxt.op_type == "Div" and _back(g, nxt.input[0]) == _back(g, x)
    if nxt is None or not scaled:
        return None
    out = _forward(g, nxt.output[0])
    while (m := g.single_consumer(out)) is not None and m.op_type == "Mul" and any(g.is_const(t) for t in m.input):
        out = _forward(g, m.output[0])
    return Norm(g.producer[out], (x,), out, g.producer[square.output[0]])


def _back(g: Graph, t: str) -> str:
    """Through the Casts / Identities that produce t, to the tensor they convert."""
    while (n := g.node_of(t)) is not None and n.op_type in PASS_THROUGH:
        t = n.input[0]
    return t


def _forward(g: Graph, t: str) -> str:
    """Through a chain of single-consumer Casts / Identities."""
    while (nxt := g.single_consumer(t)) is not None and nxt.op_type in PASS_THROUGH:
        t = nxt.output[0]
    return t
