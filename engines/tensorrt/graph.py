"""Facts an engine build reads from an ONNX file's structure (weights never loaded).

- `input_axes`: graph inputs -> axis names (dim_param) or fixed ints, e.g. {"input_ids": ("batch",
  "sequence")} or ("batch", "choices", "sequence") for multiple choice: what optimization profiles bind.
- `count_plugin_nodes`: the RoformerRotary nodes, each of which must become one plugin layer.
- `table_rows`: rows of the rotary sin/cos table, the longest sequence the engine can accept.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from export.passes.rotary import COS_CACHE_NAME, SINCOS_NAME
from plugins.identity import PLUGIN_OP


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


def count_plugin_nodes(onnx_path: str | Path) -> list[str]:
    """Names of the RoformerRotary nodes in the ONNX file (weights not loaded)."""
    m = onnx.load(str(onnx_path), load_external_data=False)
    return [n.name or f"{PLUGIN_OP}_{i}" for i, n in enumerate(m.graph.node) if n.op_type == PLUGIN_OP]


def table_rows(onnx_path: str | Path) -> int | None:
    """Rows of the rotary sin/cos table in the file = the longest sequence its engine can accept."""
    m = onnx.load(str(onnx_path), load_external_data=False)
    # the precision pass may append a dtype suffix to a converted initializer's name
    return next((int(i.dims[0]) for i in m.graph.initializer if i.name.startswith((SINCOS_NAME, COS_CACHE_NAME))), None)


