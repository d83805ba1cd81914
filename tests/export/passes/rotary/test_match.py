"""Site matching (read-only), the per-site dims check and the grouping of sites into layers."""

import dataclasses
import itertools

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch

from export.passes.rotary.match import check_dims, check_site, find_sites, layer_key, match_site
from export.passes.rotary.results import Miss, Site
from export.passes.rotary.rules import LAYOUTS, ROFORMER_INTERLEAVED, SPLIT_HALVES
from export.reference import sincos_table
from tests.export.passes.rotary.graphs import NeoXAttention, RoformerSites, export_module, site_graph


@pytest.mark.parametrize("swap_add,swap_rot_mul,swap_x_mul", list(itertools.product([False, True], repeat=3)))
def test_a_site_matches_whatever_order_the_exporter_wrote_the_operands_in(swap_add, swap_rot_mul, swap_x_mul):
    g, add = site_graph(swap_add=swap_add, swap_rot_mul=swap_rot_mul, swap_x_mul=swap_x_mul)
    got = match_site(add, LAYOUTS)
    assert isinstance(got, Site) and got.x is g.inputs[0] and got.layout is ROFORMER_INTERLEAVED
    assert got.add is add and got.name == "site_add"


@pytest.mark.parametrize("swap_add", [False, True])
def test_a_complete_match_wins_over_a_near_miss_met_first(swap_add):
    """cos_pos shaped like a rotation with step 3: a near miss, met before the real rotation when the
    products come in this order (the pass before the rules returned that miss and lost the site)."""
    g, add = site_graph(near_miss_cos=True, swap_add=swap_add)
    got = match_site(add, LAYOUTS)
    assert isinstance(got, Site) and got.x is g.inputs[0]


@pytest.mark.parametrize("kwargs", [dict(unsqueeze_axis=4), dict(concat_axis=4), dict(unsqueeze_axis=4, concat_axis=4)])
def test_the_last_axis_may_be_written_as_a_positive_index(kwargs):
    _, add = site_graph(**kwargs)
    assert isinstance(match_site(add, LAYOUTS), Site)


@pytest.mark.parametrize(
    "kwargs,reason",
    [
        (dict(step=3), "steps=[3], expected x[..., 1::2]"),
        (dict(unsqueeze_axis=3), "axes [3], expected the new last axis"),
        (dict(odd_start=0), "starts=[0]"),
        (dict(concat_axis=0), "axis 0, expected the last axis"),
        (dict(other_x=True), "x itself is not the other product's operand"),
    ],
)
def test_a_near_miss_is_a_miss_with_its_reason(kwargs, reason):
    _, add = site_graph(**kwargs)
    got = match_site(add, LAYOUTS)
    assert isinstance(got, Miss) and got.anchor == "site_add" and reason in got.reason, got


def test_even_and_odd_slices_of_different_tensors_are_a_miss():
    g, add = site_graph()
    even = next(n for n in g.nodes if n.op == "Slice" and n.outputs[0].outputs[0].op == "Unsqueeze")
    even.inputs[0] = g.inputs[1]  # x2
    got = match_site(add, LAYOUTS)
    assert isinstance(got, Miss) and "different tensors" in got.reason, got


def test_not_a_candidate():
    g, add = site_graph()
    neg = next(n for n in g.nodes if n.op == "Neg")
    assert match_site(neg, LAYOUTS) is None
    assert match_site(add, ()) is None  # no layouts, nothing to find


def test_a_declined_layout_is_a_miss_with_its_reason_and_the_first_site_wins(tmp_path):
    torch.manual_seed(0)
    model = export_module(NeoXAttention(), tmp_path / "neox.onnx", 16, ["y"])
    graph = gs.import_onnx(model)
    declined = dataclasses.replace(SPLIT_HALVES, name="halves-declined", reference=None, declined="not rewritten here")
    sites, misses = find_sites(graph, (ROFORMER_INTERLEAVED, declined))
    assert sites == [] and [m.reason for m in misses] == [declined.declined]
    assert find_sites(graph, (ROFORMER_INTERLEAVED,)) == ([], [])  # not a candidate for interleaved pairs
    sites, misses = find_sites(graph, LAYOUTS)  # the default rules rewrite split halves
    assert [s.layout for s in sites] == [SPLIT_HALVES] and misses == []


def test_check_dims_binds_static_dims_and_names_a_mismatch():
    dims = {}
    assert check_dims(dims, "x", ["batch", 2, "sequence", 16], "B H S Dh") is None
    assert dims == {"H": 2, "Dh": 16}  # symbolic dims bind nothing
    assert check_dims(dims, "x", [3, 2, 7, 16], "B H S Dh") is None and dims == {"H": 2, "Dh": 16, "B": 3, "S": 7}
    assert check_dims(dims, "x", ["b", 4, "s", 16], "B H S Dh") == "dim 1 (H) of x is 4, but H was bound to 2"
    assert check_dims(dims, "x", [1, 2, 16], "B H S Dh") == "x has rank 3 [1, 2, 16], expected [B, H, S, Dh]"
    assert check_dims(dims, "x", None, "B H S Dh") is None  # unknown: the probe sizes it from its feeds
    assert check_dims(dims, "x", [0, None, "s", 16], "B H S Dh") is None  # 0 and None: unknown


def test_check_site_wants_one_even_head_size_across_sites():
    dims = {"Dh": 8}
    _, add = site_graph(dh=8)
    assert check_site(match_site(add, LAYOUTS), dims) is None
    _, add = site_graph(dh=6)
    assert check_site(match_site(add, LAYOUTS), dims) == "dim 3 (Dh) of x is 6, but Dh was bound to 8"
    _, add = site_graph(dh=7)
    assert check_site(match_site(add, LAYOUTS), {}) == "head size 7 is odd; a rotation turns pairs of dims"


def test_query_and_key_of_one_hidden_state_are_one_layer(tmp_path):
    torch.manual_seed(0)
    model = export_module(RoformerSites(sincos_table(32, 8)), tmp_path / "m.onnx", 16, ["q", "k"])
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    before = gs.export_onnx(graph).SerializeToString()
    sites, misses = find_sites(graph, LAYOUTS)
    assert len(sites) == 2 and misses == []
    assert {s.add.outputs[0].name for s in sites} == {"q", "k"}
    assert sites[0].layer_key == sites[1].layer_key == "h"  # both projections read the graph input h
    assert gs.export_onnx(graph).SerializeToString() == before, "matching changed the graph"


def test_a_tensor_that_reaches_no_projection_is_a_layer_of_its_own():
    g, add = site_graph()
    assert layer_key(g.inputs[0]) == "x"
    h = gs.Variable("h", np.float32, [1, 5, 16])
    w = gs.Constant("w", np.zeros((16, 16), np.float32))
    g = gs.Graph(inputs=[h], opset=17)
    t = g.layer(op="MatMul", inputs=[h, w], outputs=["proj"])[0]
    assert layer_key(t) == "h"
    scaled = g.layer(op="Mul", inputs=[t, np.array(0.25, np.float32)], outputs=["q_scaled"])[0]  # ESM's query
    assert layer_key(scaled) == "h"
    both = g.layer(op="Mul", inputs=[t, h], outputs=["gated"])[0]  # two activations: not a projection's output
    assert layer_key(both) == both.name
