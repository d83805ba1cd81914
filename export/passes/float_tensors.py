"""The float tensors of a graph, as the precision pass needs them: float Constants folded into initializers
(so every weight converts the same way) and the names of every fp32 tensor (ONNX type inference on a copy
without the weights)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from plugins.identity import PLUGIN_OP


def float_constants_to_initializers(model: onnx.ModelProto) -> None:
    """Float `Constant` nodes become initializers and Identity(initializer) is bypassed, in place, so
    weights exported as Constants or deduplicated by torch convert like any other weight."""
    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1:
            a = node.attribute[0]
            arr = None
            if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                arr = numpy_helper.to_array(a.t)
            elif a.name == "value_float":
                arr = np.array(a.f, dtype=np.float32)
            elif a.name == "value_floats":
                arr = np.array(list(a.floats), dtype=np.float32)
            if arr is not None:
                model.graph.initializer.append(numpy_helper.from_array(arr.astype(np.float32), node.output[0]))
                continue
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    # torch deduplicates equal tensors (e.g. zero-initialised biases) into Identity(initializer): let the
    # consumers read the initializer itself, so it converts like any other weight.
    inits = {i.name for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    alias: dict[str, str] = {}  # Identity output -> the initializer it repeats
    keep = []
    for node in model.graph.node:
        src = alias.get(node.input[0], node.input[0]) if node.input else None
        if node.op_type == "Identity" and src is not None and src in inits and node.output[0] not in outputs:
            alias[node.output[0]] = src
            continue
        keep.append(node)
    for node in keep:
        for i, name in enumerate(node.input):
            node.input[i] = alias.get(name, name)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def float_value_names(model: onnx.ModelProto) -> set[str]:
    """Names of every fp32 tensor in the graph (ONNX type inference; RoformerRotary outputs typed by hand)."""
    m = _structure_copy(model)
    # Type inference cannot see inside the custom op: its outputs have x's dtype (fp32 in the source model).
    for node in m.graph.node:
        if node.op_type == PLUGIN_OP:
            for o in node.output:
                m.graph.value_info.append(helper.make_tensor_value_info(o, TensorProto.FLOAT, None))
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    names = set()
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            names.add(vi.name)
    names |= {i.name for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}
    return names


def _structure_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for type inference without the weights: float initializers of >= 1 KiB become data-less
    stubs (name, dtype, dims); small ones (shape constants inference may read) are copied whole."""
    m = onnx.ModelProto()
    inits = list(model.graph.initializer)
    m.CopyFrom(onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions))
    graph = onnx.GraphProto()
    graph.CopyFrom(
        onnx.GraphProto(
            name=model.graph.name,
            node=model.graph.node,
            input=model.graph.input,
            output=model.graph.output,
            value_info=model.graph.value_info,
        )
    )
    for t in inits:
        if t.data_type == TensorProto.FLOAT and len(t.raw_data) >= 1024:
            graph.initializer.append(TensorProto(name=t.name, data_type=t.data_type, dims=t.dims))
        else:
            graph.initializer.append(t)
    m.graph.CopyFrom(graph)
    return m
