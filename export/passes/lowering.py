"""Make the TensorRT-bound graph runnable in ONNX Runtime: attach, in memory only, a model-local ONNX
function `roformer_trt::RoformerRotary` whose body is the contract's math in standard ops.

The file handed to TensorRT never carries this function: TensorRT 10.1's parser prefers a local
function over a registered plugin and later versions fall back to it silently, which would hide a
missing plugin. In: a ModelProto with RoformerRotary nodes. Out: a copy with the function(s) attached.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from export.errors import VerificationError
from export.passes.graph_utils import static_dim
from plugins import identity
from plugins.identity import PLUGIN_DOMAIN, PLUGIN_OP

INT64_MAX = 2**63 - 1


def with_rotary_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """Attach the function after checking every node as the TensorRT adapter would (VerificationError
    naming the node otherwise): the CPU twin must not run a graph the plugin refuses."""
    nodes = [n for n in model.graph.node if n.op_type == PLUGIN_OP and n.domain == PLUGIN_DOMAIN]
    for node in nodes:
        problem = node_problem(model, node)
        if problem:
            raise VerificationError(f"{PLUGIN_OP} node {node.name!r}: {problem}")
    arities = {len(n.input) - 1 for n in nodes}
    if not arities:
        return model
    if len(arities) > 1:  # a function has one signature; every layer of a RoFormer rotates the same tensors
        raise ValueError(f"RoformerRotary nodes with different input counts {sorted(arities)} cannot share a function")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))
    out.functions.append(rotary_function(arities.pop(), opset))
    return out


def rotary_function(k: int, opset: int) -> onnx.FunctionProto:
    """RoformerRotary(x_0..x_{k-1}, sincos) -> y_0..y_{k-1}; x_i [B, H_i, S, Dh], sincos [P, R] fp32.

    Both layouts in one body, picked by the node's `interleaved` attribute (default 1) through integer channel
    indices: pair j is (x[i0[j]], x[i1[j]]) with i0 = j * (1 + il), i1 = i0 + il + (1 - il) * R/2, and output
    channel d < R reads Concat(y0, y1)[inv[d]]; the fp32 products and sums are the contract's, whatever il is.
    """
    c = _Consts()
    nodes = [
        helper.make_node("Shape", ["sincos"], ["R"], start=1, end=2),  # [1]
        helper.make_node("Div", ["R", c.i64("two", 2)], ["half"]),  # [1] R/2
        helper.make_node("Squeeze", ["R", c.i64("zero", 0)], ["R_s"]),  # scalar R
        helper.make_node("Div", ["R_s", c.i64("two_s", 2, scalar=True)], ["half_s"]),  # scalar R/2
        _attr_constant("il", identity.ATTR_INTERLEAVED),  # scalar: 1 adjacent pairs, 0 halves
        helper.make_node("Sub", [c.i64("one_s", 1, scalar=True), "il"], ["not_il"]),
        helper.make_node("Range", [c.i64("zero_s", 0, scalar=True), "half_s", "one_s"], ["j"]),  # [R/2]
        helper.make_node("Add", ["one_s", "il"], ["step"]),
        helper.make_node("Mul", ["j", "step"], ["i0"]),  # [R/2]: 2j or j
        helper.make_node("Mul", ["not_il", "half_s"], ["half_if_split"]),
        helper.make_node("Add", ["il", "half_if_split"], ["partner"]),  # 1 or R/2
        helper.make_node("Add", ["i0", "partner"], ["i1"]),  # [R/2]: 2j+1 or j+R/2
        helper.make_node("Range", ["zero_s", "R_s", "one_s"], ["d"]),  # [R] output channels
        helper.make_node("Mod", ["d", "two_s"], ["d_odd"]),
        helper.make_node("Mul", ["d_odd", "half_s"], ["d_odd_half"]),
        helper.make_node("Div", ["d", "two_s"], ["d_pair"]),
        helper.make_node("Add", ["d_odd_half", "d_pair"], ["inv_pairs"]),  # interleaved: d%2 * R/2 + d//2
        helper.make_node("Mul", ["il", "inv_pairs"], ["inv_a"]),
        helper.make_node("Mul", ["not_il", "d"], ["inv_b"]),  # halves: d
        helper.make_node("Add", ["inv_a", "inv_b"], ["inv"]),  # [R]
    ]
    for i in range(k):
        x, p = f"x_{i}", f"t{i}_"
        nodes += [
            helper.make_node("Cast", [x], [p + "xf"], to=TensorProto.FLOAT),  # [B, H_i, S, Dh] fp32
            helper.make_node("Shape", [p + "xf"], [p + "S"], start=2, end=3),  # [1]
            helper.make_node("Slice", ["sincos", "zero", p + "S", "zero"], [p + "tab"]),
            helper.make_node("Slice", [p + "tab", "zero", "half", c.i64("one", 1)], [p + "sin"]),
            helper.make_node("Slice", [p + "tab", "half", "R", "one"], [p + "cos"]),  # [S, R/2]
            helper.make_node("Slice", [p + "xf", "R", c.i64("max", INT64_MAX), c.i64("three", 3)], [p + "rest"]),
            helper.make_node("Gather", [p + "xf", "i0"], [p + "x0"], axis=3),  # [B, H_i, S, R/2]
            helper.make_node("Gather", [p + "xf", "i1"], [p + "x1"], axis=3),
            helper.make_node("Mul", [p + "x0", p + "cos"], [p + "x0c"]),
            helper.make_node("Mul", [p + "x1", p + "sin"], [p + "x1s"]),
            helper.make_node("Sub", [p + "x0c", p + "x1s"], [p + "y0"]),  # x0*c - x1*s
            helper.make_node("Mul", [p + "x1", p + "cos"], [p + "x1c"]),
            helper.make_node("Mul", [p + "x0", p + "sin"], [p + "x0s"]),
            helper.make_node("Add", [p + "x1c", p + "x0s"], [p + "y1"]),  # x1*c + x0*s
            helper.make_node("Concat", [p + "y0", p + "y1"], [p + "ycat"], axis=3),  # [B, H_i, S, R]
            helper.make_node("Gather", [p + "ycat", "inv"], [p + "yr"], axis=3),  # back to channel order
            helper.make_node("Concat", [p + "yr", p + "rest"], [p + "yf"], axis=3),
            helper.make_node("CastLike", [p + "yf", x], [f"y_{i}"]),
        ]
    others = [f for f in identity.FIELDS if f != identity.ATTR_INTERLEAVED]
    return helper.make_function(
        PLUGIN_DOMAIN,
        PLUGIN_OP,
        inputs=[f"x_{i}" for i in range(k)] + ["sincos"],
        outputs=[f"y_{i}" for i in range(k)],
        nodes=c.nodes + nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=[*others, identity.ATTR_PLUGIN_VERSION, identity.ATTR_PLUGIN_NAMESPACE],
        # the contract's default: a node without `interleaved` rotates adjacent pairs
        attribute_protos=[helper.make_attribute(identity.ATTR_INTERLEAVED, identity.LAYOUT_INTERLEAVED)],
    )


def _attr_constant(output: str, attr: str) -> onnx.NodeProto:
    """Constant(value_int = the calling node's INT attribute `attr`): an int64 scalar."""
    node = helper.make_node("Constant", [], [output])
    ref = onnx.AttributeProto(name="value_int", ref_attr_name=attr, type=onnx.AttributeProto.INT)
    node.attribute.append(ref)
    return node


def node_problem(model: onnx.ModelProto, node: onnx.NodeProto) -> str | None:
    """What the plugin would refuse in this node: its attributes, input count, the table's width and
    the head size (when the graph records them), and the plugin version/namespace the parser looks up."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    for key, want in (
        (identity.ATTR_PLUGIN_VERSION, identity.PLUGIN_VERSION),
        (identity.ATTR_PLUGIN_NAMESPACE, identity.PLUGIN_NAMESPACE),
    ):
        got = attrs.pop(key, b"").decode() if isinstance(attrs.get(key, b""), bytes) else attrs.pop(key)
        if got != want:
            return f"{key}={got!r}; TensorRT's parser looks the creator up by {key}={want!r}"
    unknown = set(attrs) - set(identity.FIELDS)
    if unknown:
        return f"unknown attributes {sorted(unknown)}; the plugin's fields are {list(identity.FIELDS)}"
    table = next((t for t in model.graph.initializer if node.input and t.name == node.input[-1]), None)
    width = int(table.dims[1]) if table is not None and len(table.dims) == 2 else None
    shapes = [_recorded_shape(model, name) for name in node.input[:-1]]
    head_dim = static_dim(shapes[0]) if shapes else None
    problem = identity.plugin_node_problem(attrs, len(node.input), table_width=width, head_dim=head_dim)
    return problem or _shared_dims_problem(list(node.input[:-1]), shapes)


def _shared_dims_problem(names: list[str], shapes: list[list | None]) -> str | None:
    """The adapter refuses rotated tensors that are not rank 4 or differ in B, S or Dh (each may have its own H,
    as K under grouped-query attention); checked where the graph records the dims."""
    known = [(n, s) for n, s in zip(names, shapes, strict=True) if s is not None]
    for name, shape in known:
        if len(shape) != 4:
            return f"{name} has rank {len(shape)}; rotated tensors are [B, H, S, Dh]"
    for axis, dim in ((0, "B"), (2, "S"), (3, "Dh")):
        values = {(n, s[axis]) for n, s in known if s[axis] > 0}
        if len({v for _, v in values}) > 1:
            return f"rotated tensors differ in {dim}: {sorted(values)}; they share B, S and Dh (H may differ)"
    return None


def _recorded_shape(model: onnx.ModelProto, name: str) -> list | None:
    """The shape the graph records for tensor `name` (value_info or input): ints, with 0 for an unknown dim."""
    for vi in list(model.graph.value_info) + list(model.graph.input):
        if vi.name == name:
            return [d.dim_value for d in vi.type.tensor_type.shape.dim]
    return None


class _Consts:
    """Constant nodes for a function body (functions have no initializers), each made once."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self._made: set[str] = set()

    def i64(self, name: str, value: int, scalar: bool = False) -> str:
        if name not in self._made:
            dims = [] if scalar else [1]
            t = helper.make_tensor(name, TensorProto.INT64, dims, [value])
            self.nodes.append(helper.make_node("Constant", [], [name], value=t))
            self._made.add(name)
        return name
