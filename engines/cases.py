"""Input axis names read from an ONNX file, for optimization profiles and validation feeds.

In:  onnx.ModelProto. Out: {input name: axis names (dim_param) or fixed ints},
     e.g. {"input_ids": ("batch", "sequence")} or ("batch", "choices", "sequence") for multiple choice.
Validation inputs, the PyTorch reference and grading live in export.validate (Shape, make_inputs,
TorchReference, grade); engine code reuses them so every report case is graded the same way.
"""

from __future__ import annotations


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
