"""The CPU twin refuses what the TensorRT adapter refuses: a RoformerRotary node the pass wrote wrong
cannot validate in ONNX Runtime (the lowering never reads attributes, so without this check it would)."""

from __future__ import annotations

import onnx
import pytest
from onnx import helper

from export.errors import VerificationError
from export.passes.lowering import node_problem, with_rotary_function
from export.passes.rotary import fuse_rotary
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
        (identity.ATTR_INTERLEAVED, 0, "interleaved=0"),
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
