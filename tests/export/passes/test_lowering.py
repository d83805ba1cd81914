"""The CPU lowering of RoformerRotary: it computes exactly the contract (both layouts, tensors with their own
head counts) in ONNX Runtime and onnx.reference, and the CPU twin refuses what the TensorRT adapter refuses: a
RoformerRotary node the pass wrote wrong cannot validate in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from export.errors import VerificationError
from export.passes.lowering import node_problem, with_rotary_function
from export.passes.rotary import fuse_rotary
from export.reference import roformer_rotary_ref, sincos_table
from export.validate import ort_session
from plugins import identity


@pytest.fixture(scope="module")
def rewritten(exported):
    path, _, config = exported("torchscript", 17)
    new, rep = fuse_rotary(
        onnx.load(str(path)),
        "plugin",
        expected=2 * config.num_hidden_layers,
        expected_nodes=config.num_hidden_layers,
        max_len=96,
        head_dim=config.hidden_size // config.num_attention_heads,
    )
    assert rep.coverage_error() is None
    return new


def plugin_nodes(model):
    return [n for n in model.graph.node if n.op_type == identity.PLUGIN_OP]


def test_every_node_the_pass_writes_is_one_the_plugin_accepts(rewritten):
    assert plugin_nodes(rewritten)
    assert all(node_problem(rewritten, n) is None for n in plugin_nodes(rewritten))
    with_rotary_function(rewritten)  # no refusal


def _with_attr(model, name, value):
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    node = plugin_nodes(bad)[0]
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + ([helper.make_attribute(name, value)] if value is not None else []))
    return bad


@pytest.mark.parametrize(
    "name,value,why",
    [
        (identity.ATTR_INTERLEAVED, -1, "interleaved=-1"),
        (identity.ATTR_INTERLEAVED, 2, "interleaved=2"),
        (identity.ATTR_ROTARY_DIM, 6, "sincos table is"),
        (identity.ATTR_ROTARY_DIM, 7, "rotary_dim=7"),
        (identity.ATTR_ROTARY_DIM, None, "missing required attribute"),
        (identity.ATTR_NUM_TENSORS, 3, "inputs but num_tensors=3"),
        (identity.ATTR_NUM_TENSORS, 5, "num_tensors=5"),
        (identity.ATTR_PLUGIN_NAMESPACE, "", "plugin_namespace"),
        (identity.ATTR_PLUGIN_VERSION, "2", "plugin_version"),
        ("rope_base", 10000, "unknown attributes"),
    ],
)
def test_a_node_the_plugin_refuses_does_not_run_on_the_cpu(rewritten, name, value, why):
    with pytest.raises(VerificationError, match=why):
        with_rotary_function(_with_attr(rewritten, name, value))


def test_an_input_count_other_than_num_tensors_plus_one_is_refused(rewritten):
    bad = onnx.ModelProto()
    bad.CopyFrom(rewritten)
    node = plugin_nodes(bad)[0]
    node.input.insert(0, node.input[0])
    with pytest.raises(VerificationError, match="num_tensors"):
        with_rotary_function(bad)


def test_split_halves_nodes_are_ones_the_plugin_accepts(rewritten):
    split = _with_attr(rewritten, identity.ATTR_INTERLEAVED, identity.LAYOUT_SPLIT_HALVES)
    assert node_problem(split, plugin_nodes(split)[0]) is None
    with_rotary_function(split)  # no refusal


def _with_recorded_dim(model, input_index: int, axis: int, value):
    """A copy whose value_info records dim `axis` of the first node's input `input_index` as `value`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    name = plugin_nodes(out)[0].input[input_index]
    vi = next(v for v in list(out.graph.value_info) + list(out.graph.input) if v.name == name)
    dim = vi.type.tensor_type.shape.dim[axis]
    dim.Clear()
    if isinstance(value, int):
        dim.dim_value = value
    else:
        dim.dim_param = value
    return out


def test_key_with_fewer_heads_is_accepted_and_other_dims_are_refused(rewritten):
    """Grouped-query attention: x_1 (the key) may record its own head count; B, S and Dh are shared."""
    x1 = plugin_nodes(rewritten)[0].input[1]
    assert any(v.name == x1 for v in rewritten.graph.value_info), "the graph records the rotated tensors' shapes"
    assert node_problem(_with_recorded_dim(rewritten, 1, 1, 1), plugin_nodes(rewritten)[0]) is None
    node = plugin_nodes(rewritten)[0]
    r = next(helper.get_attribute_value(a) for a in node.attribute if a.name == identity.ATTR_ROTARY_DIM)
    for axis, dim, value in ((0, "B", 4), (2, "S", 4), (3, "Dh", r)):  # a valid x_0, then x_1 off by one factor 2
        bad = _with_recorded_dim(_with_recorded_dim(rewritten, 0, axis, value), 1, axis, 2 * value)
        with pytest.raises(VerificationError, match=f"differ in {dim}"):
            with_rotary_function(bad)


def lowered(heads: list[int], dh: int, rotary_dim: int, interleaved: int | None, elem: int, rows: int = 20):
    """A graph of one RoformerRotary node over x_i [B, H_i, S, Dh], with the lowering attached."""
    k = len(heads)
    attrs = {"interleaved": interleaved} if interleaved is not None else {}
    node = helper.make_node(
        identity.PLUGIN_OP,
        [f"x{i}" for i in range(k)] + ["sincos"],
        [f"y{i}" for i in range(k)],
        domain=identity.PLUGIN_DOMAIN,
        plugin_version=identity.PLUGIN_VERSION,
        plugin_namespace=identity.PLUGIN_NAMESPACE,
        rotary_dim=rotary_dim,
        num_tensors=k,
        **attrs,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(f"x{i}", elem, ["B", h, "S", dh]) for i, h in enumerate(heads)],
        [helper.make_tensor_value_info(f"y{i}", elem, ["B", h, "S", dh]) for i, h in enumerate(heads)],
        initializer=[onnx.numpy_helper.from_array(sincos_table(rows, rotary_dim), "sincos")],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(identity.PLUGIN_DOMAIN, 1)]
    return with_rotary_function(helper.make_model(graph, opset_imports=opsets))


@pytest.mark.parametrize("interleaved", [None, *identity.INTERLEAVED_ALLOWED], ids=lambda v: f"interleaved={v}")
@pytest.mark.parametrize(
    "dtype,heads,dh,rotary_dim",
    [
        (np.float32, [3], 8, 8),
        (np.float16, [3, 3], 8, 8),
        (np.float32, [3, 3, 3], 8, 4),  # R < Dh: pass-through channels
        (np.float32, [4, 2], 10, 6),  # grouped-query attention, R/2 odd
        (np.float16, [4, 1, 1], 16, 16),  # GQA with a value
        (np.float32, [1, 3], 6, 6),  # x_0 with fewer heads than x_1
    ],
)
def test_lowered_function_equals_reference(interleaved, dtype, heads, dh, rotary_dim):
    """ONNX Runtime runs the contract bit for bit (fp32 math, one rounding), in the layout the attribute names
    (absent: interleaved=1); onnx.reference agrees (it does not apply a function's attribute defaults, so it
    runs the nodes that spell the attribute)."""
    model = lowered(heads, dh, rotary_dim, interleaved, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(len(heads) + dh)
    xs = [(rng.standard_normal((2, h, 11, dh)) * 4).astype(dtype) for h in heads]
    feeds = {f"x{i}": x for i, x in enumerate(xs)}
    layout = identity.LAYOUT_INTERLEAVED if interleaved is None else interleaved
    want = roformer_rotary_ref(xs, sincos_table(20, rotary_dim), rotary_dim=rotary_dim, interleaved=layout)
    runs = {"onnxruntime": ort_session(model).run(None, feeds)}
    if interleaved is not None:
        runs["onnx.reference"] = ReferenceEvaluator(model).run(None, feeds)
    for runtime, got in runs.items():
        for i, (g, r) in enumerate(zip(got, want, strict=True)):
            assert g.dtype == dtype and g.shape == r.shape, (runtime, i, g.dtype, g.shape)
            assert np.array_equal(g, r), (runtime, i, np.abs(g.astype(np.float64) - r).max())


def test_the_lowering_follows_the_layout():
    """The two layouts differ wherever R > 2 (a lowering that ignored the attribute would pass the test above
    for one of them only, never for both; this pins that they are not the same computation)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 5, 8)).astype(np.float32)
    got = {il: ort_session(lowered([2], 8, 8, il, onnx.TensorProto.FLOAT)).run(None, {"x0": x})[0] for il in (0, 1)}
    assert not np.array_equal(got[0], got[1])
