"""The one repair of the plain export: batch-1 RotaryEmbedding caches expanded to the batch.

torch 2.13's dynamo exporter at opset 23 writes HF's apply_rotary_pos_emb as `RotaryEmbedding(x_BHSDh, cos,
sin)` with caches `[1, S, R/2]` computed in the graph and no position_ids (the rule `onnx-rotary-embedding`,
rules.ONNX_ROTARY_EMBEDDING). ai.onnx RotaryEmbedding-23 says that without position_ids the caches are
`(batch_size, sequence_length, R/2)`; ONNX Runtime 1.32 holds the node to that and refuses it at batch > 1
("Inputs 'cos_cache' and 'sin_cache' are expected to have the same shape as input 'x'"), and so does TensorRT's
IRotaryEmbeddingLayer (NvInfer.h 10.16 / 11.1: caches `(batchSize, S, R/2)` without position ids); only
onnx.reference broadcasts them. So `model.onnx` as exported would be a graph that runs at batch 1 only, while it is
what a user runs on ONNX Runtime, the INT8 CPU twin's source and, with `--rope none`, the TensorRT-bound graph.

The repair: every RotaryEmbedding without position_ids whose two caches are 3-D with a static leading 1, while x's
leading dim (the batch, for 3-D and 4-D x alike) is not a static 1, reads `Expand(cache, [B, 1, 1])` instead,
B = x's leading dim. Broadcasting a batch-1 cache over the batch is what onnx.reference computes and what the
exporter meant (HF's positions are `arange(S)` for every row), so the graph's function is unchanged; every other
node, tensor and attribute stays as exported. Detection is structural (op, inputs, inferred shapes), not the
exporter's pattern: the class is "batch-1 caches without position_ids", whatever wrote them (interleaved or not, x
3-D or 4-D), and never the text of ONNX Runtime's error. The rotary pass then matches the repaired node like the
raw one (its caches are any tensor) and replaces the caches by its constant tables and position_ids.
"""

from __future__ import annotations

import numpy as np
import onnx

PREFIX = "roformer_trt_rope_batch"  # the names of the nodes and tensors the repair adds


def batch_one_nodes(model: onnx.ModelProto) -> list[str]:
    """The first output of every RotaryEmbedding without position_ids whose cos and sin caches are 3-D with a
    static leading 1 while x's leading dim is not a static 1: the nodes ONNX Runtime and TensorRT refuse at
    batch > 1. Shapes are inferred on a copy; weights are not read."""
    shapes = _shapes(onnx.shape_inference.infer_shapes(model, data_prop=True).graph)
    found = []
    for node in model.graph.node:
        if node.op_type != "RotaryEmbedding" or len(node.input) < 3 or not node.output:
            continue
        if len(node.input) > 3 and node.input[3]:  # position_ids: caches are [max_pos, R/2], read per row
            continue
        caches = [shapes.get(name) for name in node.input[1:3]]
        batch_one = all(c is not None and len(c) == 3 and c[0] == 1 for c in caches)
        x = shapes.get(node.input[0])
        if batch_one and not (x and x[0] == 1):
            found.append(node.output[0])
    return found


def expand_batch_one_caches(model: onnx.ModelProto) -> int:
    """Repair `model` in place (module docstring); returns how many RotaryEmbedding nodes now read their caches
    through an Expand to x's batch (0: nothing to repair, the model untouched). Idempotent: a repaired node's
    caches have the batch dim, not a static 1."""
    targets = set(batch_one_nodes(model))
    if not targets:
        return 0
    graph = model.graph
    ones = onnx.numpy_helper.from_array(np.array([1, 1], np.int64), _unused(model, f"{PREFIX}_ones"))
    graph.initializer.append(ones)
    nodes: list[onnx.NodeProto] = []
    repaired = 0
    for node in list(graph.node):
        if node.op_type == "RotaryEmbedding" and node.output and node.output[0] in targets:
            nodes += _expanded_inputs(node, _unused(model, f"{PREFIX}_{repaired}"), ones.name)
            repaired += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return repaired


def _expanded_inputs(node: onnx.NodeProto, tag: str, ones: str) -> list[onnx.NodeProto]:
    """Shape(x)[:1] ++ [1, 1] -> Expand of cos and sin; `node` then reads the expanded caches."""
    make = onnx.helper.make_node
    added = [
        make("Shape", [node.input[0]], [f"{tag}_b"], name=f"{tag}_shape", start=0, end=1),
        make("Concat", [f"{tag}_b", ones], [f"{tag}_b11"], name=f"{tag}_concat", axis=0),
    ]
    for i, what in ((1, "cos"), (2, "sin")):
        out = f"{tag}_{what}"
        added.append(make("Expand", [node.input[i], f"{tag}_b11"], [out], name=f"{tag}_expand_{what}"))
        node.input[i] = out
    return added


def _shapes(graph: onnx.GraphProto) -> dict[str, list[int | None]]:
    """Every tensor's inferred shape, a dim None where it is symbolic or unknown."""
    out: dict[str, list[int | None]] = {}
    for v in (*graph.input, *graph.value_info, *graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in graph.initializer:
        out[init.name] = list(init.dims)
    return out


def _unused(model: onnx.ModelProto, stem: str) -> str:
    """`stem`, or `stem_N` when a tensor or node of the graph already has that name (a second repair of a graph
    that was repaired and edited)."""
    taken = {t for n in model.graph.node for t in (*n.input, *n.output, n.name)}
    taken |= {t.name for t in model.graph.initializer}
    name, k = stem, 0
    while name in taken or f"{name}_b" in taken:
        k += 1
        name = f"{stem}_{k}"
    return name
