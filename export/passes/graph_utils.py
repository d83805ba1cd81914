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


def fold_ints(t: gs.Tensor | None, depth: int = 10) -> list[int] | None:
    """The integer value of t when it is a constant or shape arithmetic over static dims, e.g. TorchScript's
    `x.shape[-1] // 2`: Unsqueeze(Cast(Div(Gather(Shape(x), 3), 2))). None when any element depends on a
    dynamic dim or on an op this does not fold. Reads no initializer but the small int ones on the path."""
    got = None if t is None else _fold(t, depth)
    if got is None:
        return None
    known = [v for v in got if v is not None]
    return known if len(known) == len(got) else None


_SAME_VALUES = ("Identity", "Squeeze", "Unsqueeze", "Flatten")
_INT_TYPES = (6, 7)  # TensorProto INT32, INT64
Partial = list[int | None]  # a folded value; None where an element is not known


def _fold(t: gs.Tensor, depth: int) -> Partial | None:
    """Like fold_ints, with None for the elements that are unknown (a symbolic dim of a Shape)."""
    v = const_ints(t)
    if v is not None:
        return list[int | None](v)
    if depth <= 0 or not isinstance(t, gs.Variable) or len(t.inputs) != 1:
        return None
    node, ins = t.inputs[0], t.inputs[0].inputs
    if node.op == "Shape":
        if ins[0].shape is None:
            return None
        picked = list(ins[0].shape)[node.attrs.get("start", 0) : node.attrs.get("end", None)]  # clamps as ONNX
        return [static_dim(picked, i) for i in range(len(picked))]
    args: list[Partial] = []
    for i in ins:
        a = _fold(i, depth - 1)
        if a is None:
            return None
        args.append(a)
    return _apply(node, args)


def _apply(node: gs.Node, args: list[Partial]) -> Partial | None:
    """One folded op over folded inputs (all of them known to be lists)."""
    if node.op == "Cast":
        return args[0] if node.attrs.get("to") in _INT_TYPES else None
    if node.op in _SAME_VALUES:  # values are kept flat: these change only the shape around them
        return args[0]
    if node.op == "Gather" and node.attrs.get("axis", 0) == 0 and len(args) == 2:
        data, idx = args
        return [data[i] if i is not None and -len(data) <= i < len(data) else None for i in idx] or None
    if node.op == "Concat" and node.attrs.get("axis") in (0, -1):
        return [v for a in args for v in a]
    if node.op in ("Add", "Sub", "Mul", "Div") and len(args) == 2 and len(args[1]) == 1:
        b = args[1][0]
        return [_arith(node.op, x, b) for x in args[0]]
    return None


def _arith(op: str, a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return None
    if op == "Div":  # ONNX integer Div truncates: exact as // for the non-negative dims folded here
        return a // b if a >= 0 and b > 0 else None
    return a + b if op == "Add" else a - b if op == "Sub" else a * b


def is_last_axis(axis: int | None, rank: int) -> bool:
    return axis is not None and axis in (-1, rank - 1)


def static_dim(shape, axis: int = -1) -> int | None:
    """shape[axis] when it is known: a positive int. A symbolic dim (str), an unknown one (None or 0, as
    ONNX writes an unset dim_value) or a missing axis gives None. The head size is static_dim(x_BHSDh)."""
    if not shape or not -len(shape) <= axis < len(shape):
        return None
    d = shape[axis]
    return int(d) if isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 else None
