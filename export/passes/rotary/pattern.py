"""A small declarative pattern language over onnx-graphsurgeon graphs, onnxscript-rewriter style.

A pattern describes the subgraph that produced a tensor and reads like the code it came from:

    Op("Neg", Op("Slice", Var("x"), where=strided(1)))     # -x[..., 1::2]

`match(pattern, tensor)` walks back through producers, never changes the graph, and returns a `Match`
(the bindings: `Var` names -> tensors, named `Op`s -> nodes), or `NoMatch` with the reasons of the
alternatives that got furthest. Two kinds of failure, as onnxscript's MatchStatus has them:
- structure (an op that is not there, a tensor with several producers): not a candidate, no reason;
- a condition (an attribute or constant checked by `where`, a `Var` bound to two different tensors):
  a near miss, with a reason naming the node at fault. Callers report these.
Two tensors are "the same" for a `Var` when they are one tensor once Identity and no-op Casts (to the
dtype the tensor already has) are looked through, or the outputs of two identical nodes over the same
inputs: TorchScript traces HF's `q.float()` once per use, so `q.float() * cos` reads Cast(q) and
`rotate_half(q.float())` reads Cast(Cast(q)).
Commutative ops try both input orders; the first complete match wins over every near miss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from export.passes.graph_utils import producer

Check = Callable[[gs.Node], str | None]  # why the node fails a condition, or None
Bindings = dict  # name -> gs.Tensor (Var) or gs.Node (named Op)


@dataclass(frozen=True)
class Var:
    """Any tensor, bound to `name`; every later occurrence of `name` must be that same tensor.
    `differs` is the reason reported when it is not (default: both tensor names)."""

    name: str
    differs: str = ""


@dataclass(frozen=True)
class AnyValue:
    """Any tensor, not bound."""


ANY = AnyValue()


@dataclass(frozen=True, init=False)
class Op:
    """The tensor's one producer has op `op` (or one of them) and its first inputs match `inputs`.
    n_inputs: the exact input count, where more inputs would change the meaning (Concat);
    commutative: a two-input op whose inputs may come in either order (Add, Mul);
    where: conditions a pattern cannot express, checked once the inputs match;
    name: bind the matched node under this name."""

    op: tuple[str, ...]
    inputs: tuple
    n_inputs: int | None
    commutative: bool
    where: tuple[Check, ...]
    name: str | None

    def __init__(
        self,
        op: str | tuple[str, ...],
        *inputs,
        n_inputs: int | None = None,
        commutative: bool = False,
        where: Check | tuple[Check, ...] = (),
        name: str | None = None,
    ):
        set_ = object.__setattr__  # frozen dataclass with a positional *inputs signature
        set_(self, "op", (op,) if isinstance(op, str) else tuple(op))
        set_(self, "inputs", inputs)
        set_(self, "n_inputs", n_inputs)
        set_(self, "commutative", commutative)
        set_(self, "where", where if isinstance(where, tuple) else (where,))
        set_(self, "name", name)
        if commutative and len(inputs) != 2:
            raise ValueError(f"a commutative pattern takes two inputs, got {len(inputs)}")


Pattern = Var | AnyValue | Op


@dataclass
class Match:
    bindings: Bindings

    def __getitem__(self, name: str):
        return self.bindings[name]


@dataclass
class NoMatch:
    reasons: list[str] = field(default_factory=list)  # near misses; empty: not even a candidate


def match(pattern: Pattern, tensor: gs.Tensor, bindings: Bindings | None = None) -> Match | NoMatch:
    """The first way `tensor` matches `pattern` (given earlier `bindings`), or the near misses."""
    reasons: list[str] = []
    for got in _match(pattern, tensor, dict(bindings or {}), reasons):
        return Match(got)
    return NoMatch(reasons)


def _match(p: Pattern, t: gs.Tensor, b: Bindings, reasons: list[str]) -> Iterator[Bindings]:
    """Every binding under which `t` matches `p`, lazily (backtracking over commutative orders)."""
    if isinstance(p, AnyValue):
        yield b
    elif isinstance(p, Var):
        bound = b.get(p.name)
        if bound is None:
            yield {**b, p.name: t}
        elif same_value(bound, t):
            yield b
        else:
            reasons.append(p.differs or f"{p.name} is {bound.name!r} in one place and {t.name!r} in another")
    else:
        node = producer(t, p.op)
        if node is None or len(node.inputs) < len(p.inputs):
            return
        if p.n_inputs is not None and len(node.inputs) != p.n_inputs:
            return
        orders = [list(node.inputs[: len(p.inputs)])]
        if p.commutative:
            orders.append(orders[0][::-1])
        for ins in orders:
            for got in _match_inputs(p.inputs, ins, b, reasons):
                why = next((w for w in (check(node) for check in p.where) if w), None)
                if why:
                    reasons.append(f"{node.op} {node.name!r}: {why}")
                    continue
                yield {**got, p.name: node} if p.name else got


def _match_inputs(patterns: tuple, tensors: list[gs.Tensor], b: Bindings, reasons: list[str]) -> Iterator[Bindings]:
    if not patterns:
        yield b
        return
    for got in _match(patterns[0], tensors[0], b, reasons):
        yield from _match_inputs(patterns[1:], tensors[1:], got, reasons)


def same_value(a: gs.Tensor, b: gs.Tensor, depth: int = 4) -> bool:
    """a is b, or both are the one output of nodes with one op, equal attributes and the same inputs (a
    common subexpression the exporter did not merge). Never reads values."""
    a, b = _through_no_ops(a), _through_no_ops(b)
    if a is b:
        return True
    if depth == 0 or not (isinstance(a, gs.Variable) and isinstance(b, gs.Variable)):
        return False
    if len(a.inputs) != 1 or len(b.inputs) != 1:
        return False
    na, nb = a.inputs[0], b.inputs[0]
    if na.op != nb.op or na.domain != nb.domain or len(na.outputs) != 1 or len(nb.outputs) != 1:
        return False
    if len(na.inputs) != len(nb.inputs) or not _same_attrs(na.attrs, nb.attrs):
        return False
    return all(same_value(x, y, depth - 1) for x, y in zip(na.inputs, nb.inputs, strict=True))


def _through_no_ops(t: gs.Tensor) -> gs.Tensor:
    """The tensor behind Identity nodes and Casts to the dtype their input already has."""
    for _ in range(8):
        node = producer(t, ("Identity", "Cast"))
        if node is None or not node.inputs:
            return t
        src = node.inputs[0]
        if node.op == "Cast" and (src.dtype is None or _onnx_type(src.dtype) != node.attrs.get("to")):
            return t
        t = src
    return t


def _onnx_type(dtype) -> int | None:
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (TypeError, ValueError, KeyError):  # a dtype numpy does not know: treat the Cast as a real one
        return None


def _same_attrs(a: dict, b: dict) -> bool:
    """Plain attribute values only (ints, floats, strings, lists of them); a tensor or graph attribute
    makes two nodes different."""
    plain = (int, float, str, bytes, list, tuple)
    if a.keys() != b.keys() or not all(isinstance(v, plain) for v in (*a.values(), *b.values())):
        return False
    return all(a[k] == b[k] for k in a)
