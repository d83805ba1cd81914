"""The pooling stage of export.build (`--pooling`): the fp32 TensorRT-bound graph gains `sentence_embedding`
[batch, width] (export.passes.pooling) under its own file name.

In: the graph the rotary stage left (`model.rope-plugin.onnx`, `model.rope-onnx.onnx`, or `model.onnx` with
`--rope none`), its artifact key, the resolved pooling (export.passes.pooling.request: the Pooling and where it
came from). Out: that file rewritten in place (its structure and the pipeline's own small weights, the Dense
layers, kept in the graph file: it keeps reading the encoder's weights from `model.onnx.data`; no new file,
export/folder/layout.py), the `pooling` section, and the graph to validate under the same key, which must now
have exactly Pooling.outputs.
After the precision stage, `with_engine_outputs` adds what the file TensorRT builds from declares: its
outputs (dtype, shape) and the bytes one request of batch REQUEST_BATCH x max_len returns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from export.onnx_io import write_model
from export.passes.pooling import EMBEDDING, HIDDEN, add_sentence_embedding
from export.passes.pooling.request import Resolved
from export.progress import info, status
from export.report.schema import PoolingSection
from export.spec import BATCH, SEQUENCE
from export.stages.result import StageResult
from export.validate import OnnxFile

REQUEST_BATCH = 8  # the request the report sizes: batch 8 x max_len tokens


def run_pooling_stage(
    resolved: Resolved, src: Path, src_key: str, rotary_function: bool
) -> StageResult[PoolingSection]:
    """src: the fp32 TensorRT-bound graph (rewritten in place); rotary_function: ORT needs the RoformerRotary
    function attached to run it (a `--rope plugin` graph)."""
    pooling = resolved.pooling
    assert pooling is not None  # the build runs this stage only with a pooling
    with status(f"pooling pass ({pooling.describe()})"):
        model = onnx.load(str(src), load_external_data=False)
        hidden = declared_outputs(model)[HIDDEN]
        pooled = add_sentence_embedding(model, pooling)
        write_model(pooled, src, check=True)
    width = declared_outputs(pooled)[EMBEDDING]["shape"][-1]
    info(f"{src.name}: outputs {', '.join(pooling.outputs)} ({pooling.describe()}, fp32, width {width})")
    section: PoolingSection = {
        "mode": pooling.mode,
        "normalize": pooling.normalize,
        "dense": [d.describe() for d in pooling.dense],
        "truncate_dim": pooling.truncate_dim,
        "width": width,
        "matryoshka_dimensions": list(resolved.matryoshka) if resolved.matryoshka is not None else None,
        "source": resolved.source or {},
        "graph": src.name,
        "outputs": list(pooling.outputs),
        "hidden_state": hidden,
    }
    graph = OnnxFile(src, rotary_function=rotary_function, outputs=pooling.outputs)
    return StageResult(section, graphs={src_key: (graph, "fp32")})


def with_engine_outputs(result: StageResult[PoolingSection], trt_graph: Path, max_len: int) -> StageResult:
    """The pooling result with what `trt_graph` (the file TensorRT builds from) declares, and the bytes a
    request of REQUEST_BATCH x max_len returns: each engine output, last_hidden_state (as the graph declared
    it before pooling) and the saving of fetching sentence_embedding instead."""
    outputs = declared_outputs(onnx.load(str(trt_graph), load_external_data=False))
    sizes = {name: request_bytes(o, max_len) for name, o in outputs.items()}
    hidden = request_bytes(result.section["hidden_state"], max_len)
    section = {
        **result.section,
        "engine_graph": trt_graph.name,
        "engine_outputs": outputs,
        "request_bytes": {
            "batch": REQUEST_BATCH,
            "sequence": max_len,
            "engine_outputs": sizes,
            HIDDEN: hidden,
            EMBEDDING: sizes[EMBEDDING],
            "saved": hidden - sizes[EMBEDDING],
        },
    }
    return StageResult(section, result.artifacts, result.graphs, result.cases, result.failure)


def declared_outputs(model: onnx.ModelProto) -> dict[str, dict]:
    """{output name: {"dtype": numpy name, "shape": [axis name or size, ...]}} as the graph declares them."""
    out = {}
    for o in model.graph.output:
        t = o.type.tensor_type
        shape = [d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in t.shape.dim]
        out[o.name] = {"dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": shape}
    return out


def request_bytes(output: dict, max_len: int) -> int:
    """Bytes of `output` ({dtype, shape}) for a request of REQUEST_BATCH x max_len tokens."""
    sizes = {BATCH: REQUEST_BATCH, SEQUENCE: max_len}
    elements = 1
    for d in output["shape"]:
        elements *= sizes[d] if isinstance(d, str) else d
    return elements * np.dtype(output["dtype"]).itemsize
