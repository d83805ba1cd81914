"""locate(model) -> Structure: the landmarks of an ONNX graph (rules in export/diagnose/structure.py).

Which skeleton is searched follows the family's layer map (`LayerMap.norm`): post-norm (RoFormer) here,
pre-norm (ModernBERT) in export/diagnose/prenorm.py. The family comes from the graph's metadata
(export.onnx_export.FAMILY_KEY); a graph without it is searched post-norm first, then pre-norm."""

from __future__ import annotations

import onnx

from export.diagnose.attention import attention_landmarks, producer_name, region, weight_matmul
from export.diagnose.prenorm import locate_pre
from export.diagnose.structure import (
    FUSED_ATTENTION_OPS,
    PASS_THROUGH,
    Graph,
    Landmark,
    Norm,
    Structure,
    find_norms,
)
from export.families.family import PRE_NORM
from export.families.registry import by_name, names
from export.onnx_export import declared_family


def locate(model: onnx.ModelProto) -> Structure:
    family = declared_family(model)
    if family is not None and family in names():
        return (locate_pre if by_name(family).layer_map.norm == PRE_NORM else locate_post)(model)
    post = locate_post(model)
    return post if post.layers else locate_pre(model)


def locate_post(model: onnx.ModelProto) -> Structure:
    """Post-norm: each layer closes with a LayerNorm after its attention block and one after its FFN."""
    g = Graph(model)
    norms = find_norms(g)
    stops = {n.output for n in norms}
    kinds = [_kind(g, norm, region(g, norm.inputs, stops - {norm.output})) for norm in norms]
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
            region(g, attn.inputs, stops - {attn.output})
            | region(g, ffn.inputs, stops - {ffn.output})
            | _norm_nodes(g, attn)
            | _norm_nodes(g, ffn)
        )
        landmarks += _layer_landmarks(g, k, attn, ffn, stops, regions[k], notes)
    last = layers[-1][1].output if layers else None
    for out in g.outputs:
        if out != last and out in g.producer:
            landmarks.append(Landmark("head", None, (out,), (g.name(g.producer[out]),)))
    return Structure(sorted(landmarks, key=lambda m: m.key), len(layers), regions, notes)


def _norm_nodes(g: Graph, norm: Norm) -> set[int]:
    return region(g, [norm.output], set(norm.inputs)) | {norm.index}


def _kind(g: Graph, norm: Norm, region: set[int]) -> str:
    ops = {g.nodes[i].op_type for i in region}
    if "Softmax" in ops or ops & FUSED_ATTENTION_OPS:
        return "attention"
    if any(weight_matmul(g, i) for i in region):
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
    out = attention_landmarks(g, k, stops, region, notes)
    out.append(Landmark("attention_output", k, (attn.output,), (g.name(attn.index),)))
    ffn_out = _residual_branch(g, ffn, attn.output)
    if ffn_out is None:
        notes.append(f"layer {k}: the FFN output (the residual Add's other operand) was not found")
    else:
        out.append(Landmark("ffn_output", k, (ffn_out,), (producer_name(g, ffn_out),)))
    out.append(Landmark("layer_output", k, (ffn.output,), (g.name(ffn.index),)))
    return out


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
