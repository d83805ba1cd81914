"""Checked navigation helpers for onnx-graphsurgeon graphs: they return None instead of guessing."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


def producer(t: gs.Tensor, op: str | tuple[str, ...]) -> gs.Node | None:
    """The node producing t, if there is exactly one and its op is `op` (or one of them)."""
    ops = (op,) if isinstance(op, str) else op
    if isinstance(t, gs.Variable) and len(t.inputs) == 1 and t.inputs[0].op in ops:
        return t.inputs[0]
    return None


def const_value(t: gs.Tensor) -> np.ndarray | None:
    """Value of an initializer or of a Constant node's output; None for anything computed."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    ident = producer(t, "Identity")  # TorchScript aliases shared initializers through Identity
    if ident is not None:
        return const_value(ident.inputs[0])
    node = producer(t, "Constant")
    if node is not None:
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
        if value is not None:
            return np.asarray(value)
        for key in ("value_int", "value_ints", "value_float", "value_floats"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
    return None


def const_ints(t: gs.Tensor | None) -> list[int] | None:
    v = None if t is None else const_value(t)
    return None if v is None else [int(x) for x in np.atleast_1d(v)]


def is_last_axis(axis: int | None, rank: int) -> bool:
    return axis is not None and axis in (-1, rank - 1)


def static_dim(shape, axis: int = -1) -> int | None:
    """shape[axis] when it is known: a positive int. A symbolic dim (str), an unknown one (None or 0, as
    ONNX writes an unset dim_value) or a missing axis gives None. The head size is static_dim(x_BHSDh)."""
    if not shape or not -len(shape) <= axis < len(shape):
        return None
    d = shape[axis]
    return int(d) if isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 else None
