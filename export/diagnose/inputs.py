"""Inputs for a diagnosis read from a graph: vocab sizes from its embedding tables (a Gather, or ONNX Runtime's
fused EmbedLayerNormalization as in the INT8 CPU twin) or, when the graph has none, from the report of the build
it belongs to; the choices axis from its input rank, the longest sequence from its declared max_len. Feeds are
export.validate.make_inputs's, so a diagnosis of a validation case sees the very inputs the validation did, and
`check_feeds` refuses a graph whose inputs cannot take them (a fixed dim, another dtype) before ORT runs it."""

from __future__ import annotations

import numpy as np
import onnx

from export.errors import UsageError
from export.onnx_export import declared_max_len
from export.validate import Shape, make_inputs

MC_CHOICES = 2  # choices per example for a multiple-choice graph, as in validation
MAX_TOKENS = 1 << 16  # batch x seq of one diagnosis: 32 x 2048 (validation's longest case is 1 x max_len)
GRAPH_FIX = "pass a graph written by python -m export.build"


def graph_shape(model: onnx.ModelProto, batch: int, seq: int) -> Shape:
    """Shape(batch, seq) for this graph: the last row half padded when there are rows and tokens to pad."""
    check_tokens(batch, seq)
    max_len = declared_max_len(model)
    if max_len is not None and seq > max_len:
        raise UsageError(f"--seq {seq} is longer than the graph's max_len {max_len}; pass --seq {max_len} or less")
    ids = next((i for i in model.graph.input if i.name == "input_ids"), None)
    if ids is None:
        raise UsageError("the graph has no input_ids input; pass a graph written by python -m export.build")
    rank = len(ids.type.tensor_type.shape.dim)
    return Shape(batch, seq, 1 if batch > 1 and seq > 1 else 0, MC_CHOICES if rank == 3 else None)


def check_tokens(batch: int, seq: int) -> None:
    """UsageError unless 1 <= batch, seq and batch x seq <= MAX_TOKENS."""
    if batch < 1 or seq < 1:
        raise UsageError(f"--batch {batch} --seq {seq}: both must be at least 1")
    if batch * seq > MAX_TOKENS:
        raise UsageError(
            f"--batch {batch} x --seq {seq} is {batch * seq} tokens, more than the {MAX_TOKENS} a diagnosis runs; "
            "a divergence shows on a few rows: pass a smaller --batch or --seq"
        )


def table_rows(model: onnx.ModelProto, input_name: str) -> int | None:
    """Rows of the embedding table read with `input_name` (through Casts): the vocab (or type-vocab) size.
    A Gather(table, ids), or EmbedLayerNormalization(input_ids, segment_ids, word table, position table,
    segment table, ...) as ONNX Runtime's fusions write it."""
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    names = {input_name}
    for n in model.graph.node:  # graph order: a Cast's input is named before its output is used
        if n.op_type in ("Cast", "Identity") and n.input and n.input[0] in names:
            names.add(n.output[0])
    for n in model.graph.node:
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[1] in names and dims.get(n.input[0]):
            return int(dims[n.input[0]][0])
        if n.op_type == "EmbedLayerNormalization":
            for ids, table in ((0, 2), (1, 4)):
                if len(n.input) > table and n.input[ids] in names and dims.get(n.input[table]):
                    return int(dims[n.input[table]][0])
    return None


def vocab_sizes(models: list[onnx.ModelProto]) -> tuple[int | None, int | None]:
    """(vocab size, type-vocab size) read from the first graph that has each table; None when none has it."""
    vocab = next((v for m in models if (v := table_rows(m, "input_ids")) is not None), None)
    types = next((v for m in models if (v := table_rows(m, "token_type_ids")) is not None), None)
    return vocab, types


def graph_feeds(shape: Shape, vocab: int, type_vocab: int | None, types_input: bool = True) -> dict[str, np.ndarray]:
    """make_inputs's feeds; token_type_ids only when a graph takes them (types_input: a family may have none)."""
    return make_inputs(shape, vocab, (type_vocab or 1) if types_input else None)


def takes_types(models: list[onnx.ModelProto]) -> bool:
    """Some graph has a token_type_ids input."""
    return any(i.name == "token_type_ids" for m in models for i in m.graph.input)


def check_feeds(model: onnx.ModelProto, feeds: dict[str, np.ndarray], where: str) -> None:
    """UsageError unless every input of the graph is fed, with int64 values of a shape its fixed dims allow."""
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        if vi.name not in feeds:
            raise UsageError(f"{where} has input {vi.name!r}, which no family of export/families/ takes; {GRAPH_FIX}")
        tt, feed = vi.type.tensor_type, feeds[vi.name]
        if tt.elem_type != onnx.TensorProto.INT64:
            name = onnx.helper.tensor_dtype_to_string(tt.elem_type)
            raise UsageError(f"{where}: input {vi.name!r} is {name}, not int64; {GRAPH_FIX}")
        dims = list(tt.shape.dim)
        if tt.HasField("shape") and len(dims) != feed.ndim:
            raise UsageError(f"{where}: input {vi.name!r} has rank {len(dims)}, the feeds {feed.ndim}; {GRAPH_FIX}")
        for axis, (d, size) in enumerate(zip(dims, feed.shape, strict=False)):
            if d.HasField("dim_value") and d.dim_value != size:
                raise UsageError(
                    f"{where}: input {vi.name!r} fixes axis {axis} at {d.dim_value}, the diagnosis feeds "
                    f"{size}; pass --batch/--seq to match it, or a graph with dynamic axes"
                )
