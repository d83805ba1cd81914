"""Facts an engine build reads from an ONNX file's structure (weights never loaded).

- `input_axes`: graph inputs -> axis names (dim_param) or fixed ints, e.g. {"input_ids": ("batch",
  "sequence")} or ("batch", "choices", "sequence") for multiple choice: what optimization profiles bind.
- `count_plugin_nodes`: the RoformerRotary nodes, each of which must become one plugin layer.
- `declared_max_len`: the longest sequence the graph declares (export.build's --max-len), what the engine accepts.
- `quantized_format`: "int8" / "fp8" for a Q/DQ graph (export.build --precision int8 | fp8), None otherwise.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from export.onnx_export import declared_max_len as declared_max_len_of
from plugins.identity import PLUGIN_OP

QUANT_TYPES = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.FLOAT8E4M3FN: "fp8"}


def input_axes(model) -> dict[str, tuple]:
    """Graph inputs (not initializers listed as inputs) -> their axes; a dim without a name is its size."""
    inits = {i.name for i in model.graph.initializer}
    axes = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        axes[vi.name] = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in dims)
    return axes


def quantized_format(onnx_path: str | Path) -> str | None:
    """ "int8" or "fp8" for a Q/DQ graph (read from its zero points' type), None for a graph without Q/DQ.
    ValueError for a graph that mixes both (TensorRT cannot use INT8 and FP8 in one network) or whose zero points
    are not initializers of either type (nothing this toolchain writes)."""
    m = onnx.load(str(onnx_path), load_external_data=False)
    types = {t.name: t.data_type for t in m.graph.initializer}
    found = {
        QUANT_TYPES.get(types.get(n.input[2], onnx.TensorProto.UNDEFINED), "other")  # not an initializer: other
        for n in m.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2
    }
    if "other" in found:
        raise ValueError(f"{Path(onnx_path).name} has Q/DQ zero points that are not int8 or float8e4m3fn initializers")
    if len(found) > 1:
        raise ValueError(f"{Path(onnx_path).name} mixes Q/DQ types {sorted(found)}")
    return found.pop() if found else None


def count_plugin_nodes(onnx_path: str | Path) -> list[str]:
    """Names of the RoformerRotary nodes in the ONNX file (weights not loaded)."""
    m = onnx.load(str(onnx_path), load_external_data=False)
    return [n.name or f"{PLUGIN_OP}_{i}" for i, n in enumerate(m.graph.node) if n.op_type == PLUGIN_OP]


def declared_max_len(onnx_path: str | Path) -> int | None:
    """The longest sequence the graph declares it serves (export.build writes it into the file's metadata),
    None for a graph that declares none."""
    return declared_max_len_of(onnx.load(str(onnx_path), load_external_data=False))
