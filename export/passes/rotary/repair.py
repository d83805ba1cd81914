"""The one repair of the plain export: the exporter's batch-1 RotaryEmbedding caches expanded to the batch.

torch 2.13's dynamo exporter at opset 23 writes HF's apply_rotary_pos_emb as `RotaryEmbedding(x_BHSDh, cos,
sin)` with caches `[1, S, R/2]` computed in the graph and no position_ids (the rule `onnx-rotary-embedding`,
rules.ONNX_ROTARY_EMBEDDING). ai.onnx RotaryEmbedding-23 says that without position_ids the caches are
`(batch_size, sequence_length, R/2)`; ONNX Runtime 1.32 holds the node to that and refuses it at batch > 1
("Inputs 'cos_cache' and 'sin_cache' are expected to have the same shape as input 'x'"), and so does TensorRT's
IRotaryEmbeddingLayer (NvInfer.h 10.16 / 11.1: caches `(batchSize, S, R/2)` without position ids); only
onnx.reference broadcasts them. So `model.onnx` as exported would be a graph that runs at batch 1 only, while it is
what a user runs on ONNX Runtime, what Polygraphy compares an engine with, the INT8 CPU twin's source and, with
`--rope none`, the TensorRT-bound graph itself.

The repair: every node the rule's own pattern matches whose caches have a static leading 1 where x's batch is not
static 1 reads `Expand(cache, [B, 1, 1])` instead, B = x's leading dim. The caches hold the same rows for every
batch row (positions are `arange(S)` for all of them), so the function is the one the exporter meant and
onnx.reference computes; every other node, tensor and attribute stays as exported. The rotary pass still matches
the repaired node (its caches are any tensor) and replaces the caches by its constant tables and position_ids.
Detection is structural (the pattern and the shapes), never the text of ONNX Runtime's error.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from export.passes.graph_utils import static_dim
from export.passes.rotary.pattern import Match, match
from export.passes.rotary.rules import ONNX_ROTARY_EMBEDDING

PREFIX = "roformer_trt_rope_batch"  # the names of the nodes and tensors the repair adds


def batch_one_nodes(model: onnx.ModelProto) -> list[str]:
    """The first output of every exporter RotaryEmbedding (the rule's pattern) whose cos/sin caches have a static
    leading 1 while x's batch is not static 1: the nodes ONNX Runtime and TensorRT refuse at batch > 1. Works on
    structure (shapes inferred on a copy; weights are not read)."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = gs.import_onnx(inferred)
    found = []
    for node in graph.nodes:
        if node.op != "RotaryEmbedding" or not node.outputs:
            continue
        if not isinstance(match(ONNX_ROTARY_EMBEDDING.site, node.outputs[0]), Match):
            continue
        caches_one = all(_leading(t) == 1 for t in node.inputs[1:3])
        if caches_one and _leading(node.inputs[0]) != 1:
            found.append(node.outputs[0].name)
    return found


def expand_batch_one_caches(model: onnx.ModelProto) -> int:
    """Repair `model` in place (module docstring); returns how many RotaryEmbedding nodes now read their caches
    through an Expand to x's batch (0: nothing to repair, the model untouched). Idempotent: a repaired node's
    caches have the batch dim, not a static 1."""
    targets = set(batch_one_nodes(model))
    if not targets:
        return 0
    graph = model.graph
    ones = onnx.numpy_helper.from_array(np.array([1, 1], np.int64), f"{PREFIX}_ones")
    graph.initializer.append(ones)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "RotaryEmbedding" and node.output and node.output[0] in targets:
            nodes += _expanded_inputs(node, len(nodes), ones.name)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(targets)


def _expanded_inputs(node: onnx.NodeProto, k: int, ones: str) -> list[onnx.NodeProto]:
    """Shape(x)[:1] ++ [1, 1] -> Expand of cos and sin; `node` then reads the expanded caches."""
    tag = f"{PREFIX}_{k}"
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


def _leading(t: gs.Tensor) -> int | None:
    """t's static leading dim, None when it is unknown or symbolic."""
    if t.shape is None or len(t.shape) == 0:
        return None
    return static_dim(t.shape, 0)
