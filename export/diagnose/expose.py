"""Run an ONNX graph in ONNX Runtime (CPU) with chosen intermediate tensors exposed as extra outputs.

In:  a graph (path, export.inputs.graph_file.GraphFile (read and checked), export.validate.OnnxFile, or an in-memory
     ModelProto holding its weights), value names,
     numpy feeds. Out: {name: array, in the graph's dtype} for every name asked for.
The graph file is read without its weights (ORT reads them from the file's folder), RoformerRotary nodes get
their ONNX function attached in memory (export.passes.lowering), and one session lives at a time: the cost of
one call is one session (the weights once) plus the exposed tensors, which ORT then cannot reuse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from export.inputs.graph_file import GraphFile
from export.passes.lowering import with_rotary_function
from export.validate import OnnxFile
from plugins.identity import PLUGIN_OP


def structure_of(graph) -> onnx.ModelProto:
    """The graph's ModelProto without its external weights (an in-memory model is returned as it is, a GraphFile's
    checked model too)."""
    if isinstance(graph, onnx.ModelProto):
        return graph
    if isinstance(graph, GraphFile):
        return graph.model
    return onnx.load(str(_path(graph)), load_external_data=False)


def _path(graph) -> Path:
    return Path(graph.path if isinstance(graph, (OnnxFile, GraphFile)) else graph)


def run_exposed(
    graph, names: list[str], feeds: dict[str, np.ndarray], structure: onnx.ModelProto | None = None
) -> dict[str, np.ndarray]:
    """Outputs `names` (intermediate or not, each once) of `graph` on `feeds`."""
    import onnxruntime as ort

    model = structure if structure is not None else structure_of(graph)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    for name in names:
        if name not in have:
            out.graph.output.append(helper.make_empty_tensor_value_info(name))
            have.add(name)
    if any(n.op_type == PLUGIN_OP for n in out.graph.node) and not any(f.name == PLUGIN_OP for f in out.functions):
        out = with_rotary_function(out)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not isinstance(graph, onnx.ModelProto):
        opts.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(_path(graph).resolve().parent)
        )
    sess = ort.InferenceSession(out.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    del out
    wanted = {i.name for i in sess.get_inputs()}
    names = list(dict.fromkeys(names))
    values = sess.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}
