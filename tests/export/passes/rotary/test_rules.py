"""The site layouts as rule objects: each rule's pattern, conditions and reference, the registry, and that
a new layout is one rule: a rule written here, handed to the driver, is found, verified against its own
reference and rewritten, with nothing else changed."""

import dataclasses

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch

from export.passes.lowering import with_rotary_function
from export.passes.rotary import fuse_rotary
from export.passes.rotary.pattern import Match, NoMatch, match
from export.passes.rotary.rules import (
    LAYOUTS,
    ONNX_ROTARY_EMBEDDING,
    ROFORMER_INTERLEAVED,
    SPLIT_HALVES,
    rotate_half_ref,
    strided_slice,
    unsqueeze_last,
)
from export.reference import roformer_rotary_ref, rotary_angles, sincos_table
from export.validate import ort_session
from plugins import identity
from tests.export.passes.rotary.graphs import NeoXAttention, export_module, site_graph


def test_the_registry():
    assert LAYOUTS[0] is ROFORMER_INTERLEAVED  # RoFormer's own layout is tried first
    assert len({layout.name for layout in LAYOUTS}) == len(LAYOUTS)
    for layout in LAYOUTS:
        assert layout.source, f"{layout.name} does not say where its pattern comes from"
        if layout.declined:  # recognised, reported by name, never rewritten
            assert layout.reference is None
        else:
            assert layout.reference is not None and layout.interleaved in (0, 1)
    assert ROFORMER_INTERLEAVED.interleaved in identity.INTERLEAVED_ALLOWED  # the plugin can take it
    assert {SPLIT_HALVES.interleaved, ONNX_ROTARY_EMBEDDING.interleaved} == {0}


def test_interleaved_rotation_binds_x():
    g, add = site_graph()
    rotated = next(n for n in g.nodes if n.op == "Reshape").outputs[0]
    got = match(ROFORMER_INTERLEAVED.rotation, rotated)
    assert isinstance(got, Match) and got["x"] is g.inputs[0]
    got = match(ROFORMER_INTERLEAVED.site, add.outputs[0])
    assert isinstance(got, Match) and got["x"] is g.inputs[0] and got["add"] is add


def test_the_interleaved_reference_is_the_contract():
    rng = np.random.default_rng(0)
    x, table = rng.standard_normal((2, 3, 11, 8)).astype(np.float32), sincos_table(16, 8)
    assert np.array_equal(ROFORMER_INTERLEAVED.reference(x, table), roformer_rotary_ref([x], table)[0])


def _slice_node(starts, ends, axes, steps):
    x = gs.Variable("x", np.float32, ["B", 2, "S", 8])
    ins = [x] + [gs.Constant(f"c{i}", np.array(v, np.int64)) for i, v in enumerate((starts, ends, axes, steps))]
    return gs.Node("Slice", "sl", inputs=ins, outputs=[gs.Variable("y")])


@pytest.mark.parametrize(
    "args,start,why",
    [
        (([1], [9**9], [-1], [2]), 1, None),
        (([0], [9**9], [3], [2]), 0, None),
        (([0], [9**9], [3], [2]), 1, "starts=[0] axes=[3] steps=[2], expected x[..., 1::2]"),
        (([1], [9**9], [2], [2]), 1, "expected x[..., 1::2]"),  # not the last axis
        (([1], [9**9], [-1], [1]), 1, "steps=[1]"),
        (([1], [1], [-1], [2]), 1, "ends=[1], expected the end of the head dimension"),
    ],
)
def test_strided_slice(args, start, why):
    got = strided_slice(start)(_slice_node(*args))
    assert got == why if why is None else why in got


def test_unsqueeze_last_reads_axes_from_the_input_or_the_pre_13_attribute():
    x = gs.Variable("x", np.float32, [1, 2, 3, 4])
    as_input = lambda a: gs.Node("Unsqueeze", inputs=[x, gs.Constant("a", np.array(a, np.int64))])  # noqa: E731
    assert unsqueeze_last(5)(as_input([-1])) is None and unsqueeze_last(5)(as_input([4])) is None
    assert unsqueeze_last(5)(as_input([3])) == "axes [3], expected the new last axis"
    assert unsqueeze_last(5)(gs.Node("Unsqueeze", inputs=[x], attrs={"axes": [-1]})) is None
    assert "expected the new last axis" in unsqueeze_last(5)(gs.Node("Unsqueeze", inputs=[x]))


def halves_reference(x_BHSDh: np.ndarray, sincos: np.ndarray) -> np.ndarray:
    """GPT-NeoX rotate_half over split halves, in float64: y = x * cos2 + cat(-x2, x1) * sin2."""
    s = x_BHSDh.shape[2]
    sin, cos = np.split(sincos[:s].astype(np.float64), 2, axis=-1)  # [S, Dh/2] each
    x1, x2 = np.split(x_BHSDh.astype(np.float64), 2, axis=-1)
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_BHSDh.dtype)


# A rule written here, with this file's own reference: handed to the driver, it is all it takes.
HALVES = dataclasses.replace(SPLIT_HALVES, name="split-halves-test", reference=halves_reference)


@pytest.fixture(scope="module")
def neox(tmp_path_factory):
    torch.manual_seed(0)
    return export_module(NeoXAttention(), tmp_path_factory.mktemp("neox") / "neox.onnx", 16, ["y"])


def neox_feeds(seq=5):
    return {"h": np.random.default_rng(1).standard_normal((2, seq, 16)).astype(np.float32)}


def test_halves_reference_is_the_torch_module():
    """The test rule's reference against the module it describes (its angles are rotary_angles(.., 8)), and
    the shipped rule's reference against this one."""
    torch.manual_seed(0)
    x = torch.randn(2, 2, 5, 8)
    ang = torch.from_numpy(rotary_angles(5, 8)).float()
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    want = x * cos + torch.cat([-x[..., 4:], x[..., :4]], dim=-1) * sin
    got = halves_reference(x.numpy(), sincos_table(16, 8))
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-6)  # fp32 torch vs float64 numpy
    np.testing.assert_array_equal(rotate_half_ref(x.numpy(), sincos_table(16, 8)), got)


def test_a_new_layout_is_one_rule(neox):
    new, rep = fuse_rotary(
        neox, "onnx", expected=1, max_len=16, head_dim=8, feeds=neox_feeds(), layouts=(ROFORMER_INTERLEAVED, HALVES)
    )
    assert rep.found == 1 and rep.rewritten == 1 and rep.skipped == [] and rep.coverage_error() is None
    rot = [n for n in new.graph.node if n.op_type == "RotaryEmbedding"]
    assert len(rot) == 1
    assert {a.name: onnx.helper.get_attribute_value(a) for a in rot[0].attribute} == {"interleaved": 0}
    assert not any(n.op_type == "Neg" for n in new.graph.node)
    onnx.checker.check_model(new, full_check=True)
    inputs = {"h": np.random.default_rng(2).standard_normal((3, 11, 16)).astype(np.float32)}
    before, after = ort_session(neox).run(None, inputs)[0], ort_session(new).run(None, inputs)[0]
    # the probe's own bound (probe.check_output): fp32 products and sums, a few ulps of |y|
    atol = 8 * np.finfo(np.float32).eps * max(1.0, np.abs(before).max())
    np.testing.assert_allclose(after, before, rtol=0, atol=atol)


def test_the_probe_checks_a_new_rule_against_its_own_reference(neox):
    wrong = dataclasses.replace(HALVES, reference=ROFORMER_INTERLEAVED.reference)  # right pattern, wrong math
    new, rep = fuse_rotary(neox, "onnx", expected=1, max_len=16, head_dim=8, feeds=neox_feeds(), layouts=(wrong,))
    assert rep.found == 1 and rep.rewritten == 0
    assert "numerical check failed" in rep.skipped[0]["reason"]
    assert not any(n.op_type == "RotaryEmbedding" for n in new.graph.node)


def test_a_split_halves_rule_rewrites_to_the_plugin_too(neox):
    """The plugin takes interleaved=0: the same rule in plugin mode gives a RoformerRotary node that, lowered on
    the CPU, computes what the original graph did."""
    new, rep = fuse_rotary(neox, "plugin", expected=1, max_len=16, head_dim=8, feeds=neox_feeds(), layouts=(HALVES,))
    assert rep.found == 1 and rep.rewritten == 1 and rep.skipped == []
    (node,) = [n for n in new.graph.node if n.op_type == identity.PLUGIN_OP]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs[identity.ATTR_INTERLEAVED] == identity.LAYOUT_SPLIT_HALVES
    inputs = {"h": np.random.default_rng(2).standard_normal((3, 11, 16)).astype(np.float32)}
    before = ort_session(neox).run(None, inputs)[0]
    after = ort_session(with_rotary_function(new)).run(None, inputs)[0]
    atol = 8 * np.finfo(np.float32).eps * max(1.0, np.abs(before).max())  # as test_a_new_layout_is_one_rule
    np.testing.assert_allclose(after, before, rtol=0, atol=atol)


def test_a_rule_the_plugin_cannot_take_is_refused_in_plugin_mode(neox):
    odd = dataclasses.replace(HALVES, name="no-such-layout", interleaved=2)
    new, rep = fuse_rotary(neox, "plugin", expected=1, max_len=16, head_dim=8, feeds=neox_feeds(), layouts=(odd,))
    assert rep.found == 1 and rep.rewritten == 0
    assert "interleaved=2" in rep.skipped[0]["reason"]
    assert not any(n.op_type == identity.PLUGIN_OP for n in new.graph.node)


def test_default_rules_rewrite_split_halves(neox):
    new, rep = fuse_rotary(neox, "onnx", expected=1, max_len=16, head_dim=8, feeds=neox_feeds())
    assert rep.found == rep.rewritten == 1 and rep.skipped == [] and rep.coverage_error() is None
    (rot,) = [n for n in new.graph.node if n.op_type == "RotaryEmbedding"]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in rot.attribute} == {"interleaved": 0}
    assert isinstance(match(ROFORMER_INTERLEAVED.site, gs.import_onnx(neox).outputs[0]), NoMatch)
