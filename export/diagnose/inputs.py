"""Inputs for a diagnosis read from a graph alone: vocab sizes from its embedding tables, the choices axis from
its input rank, the longest sequence from its declared max_len. Feeds are export.validate.make_inputs's, so a
diagnosis of a validation case sees the very inputs the validation did."""

from __future__ import annotations

import numpy as np
import onnx

from export.errors import UsageError
from export.onnx_export import declared_max_len
from export.validate import Shape, make_inputs

MC_CHOICES = 2  # choices per example for a multiple-choice graph, as in validation


def graph_shape(model: onnx.ModelProto, batch: int, seq: int) -> Shape:
    """Shape(batch, seq) for this graph: the last row half padded when there are rows and tokens to pad."""
    if batch < 1 or seq < 1:
        raise UsageError(f"--batch {batch} --seq {seq}: both must be at least 1")
    max_len = declared_max_len(model)
    if max_len is not None and seq > max_len:
        raise UsageError(f"--seq {seq} is longer than the graph's max_len {max_len}; pass --seq {max_len} or less")
    ids = next((i for i in model.graph.input if i.name == "input_ids"), None)
    if ids is None:
        raise UsageError("the graph has no input_ids input; pass a graph written by python -m export.build")
    rank = len(ids.type.tensor_type.shape.dim)
    return Shape(batch, seq, 1 if batch > 1 and seq > 1 else 0, MC_CHOICES if rank == 3 else None)


def table_rows(model: onnx.ModelProto, input_name: str) -> int | None:
    """Rows of the embedding table a Gather reads with `input_name`: the vocab (or type-vocab) size."""
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[1] == input_name and n.input[0] in dims:
            return int(dims[n.input[0]][0])
    return None


def graph_feeds(model: onnx.ModelProto, shape: Shape) -> dict[str, np.ndarray]:
    vocab = table_rows(model, "input_ids")
    if vocab is None:
        raise UsageError("cannot read the vocab size from the graph (no Gather of input_ids from a table)")
    has_types = any(i.name == "token_type_ids" for i in model.graph.input)  # a family may have no such input
    return make_inputs(shape, vocab, (table_rows(model, "token_type_ids") or 1) if has_types else None)
