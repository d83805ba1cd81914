"""The numerical check of a site: its own subgraph in ONNX Runtime against its layout's reference. A NaN or
infinite error is a failure with its own reason (a check written `err > tol` would let NaN through)."""

import math
from types import SimpleNamespace

import numpy as np
import onnx_graphsurgeon as gs
import pytest
import torch

from export.passes.rotary import fuse_rotary
from export.passes.rotary.match import find_sites
from export.passes.rotary.probe import check_output, error_verdict, verify_sites
from export.passes.rotary.rules import LAYOUTS, ROFORMER_INTERLEAVED
from export.reference import sincos_table
from plugins import identity
from tests.export.passes.rotary.graphs import RoformerSites, export_module, interleaved_rotation, site_graph

DH, ROWS = 8, 32


@pytest.mark.parametrize(
    "err,tol,want",
    [
        (0.0, 1e-6, None),
        (1e-6, 1e-6, None),  # at the bound: passes
        (2e-6, 1e-6, "numerical check failed: max |graph - reference| = 2e-06 > 1e-06"),
        (math.nan, 1e-6, "is nan (NaN or inf in the site's output"),
        (math.inf, 1e-6, "is inf (NaN or inf in the site's output"),
        (-math.inf, 1e-6, "is -inf (NaN or inf"),
        (math.nan, math.inf, "is nan"),  # no tolerance lets NaN through
    ],
)
def test_error_verdict(err, tol, want):
    got = error_verdict(err, tol)
    assert got == want if want is None else want in got


def hand_site_model():
    """One interleaved site with sin_pos and cos_pos as graph inputs: the probe feeds them from `feeds`."""
    g, _ = site_graph(dh=DH)
    return gs.export_onnx(g)


def pos_feeds(table: np.ndarray, seq: int) -> dict[str, np.ndarray]:
    """HF's sin_pos / cos_pos [1, 1, S, Dh]: each of the table's sin and cos columns twice, side by side."""
    sin, cos = np.split(table[:seq], 2, axis=-1)
    return {
        "x": np.zeros((2, 2, seq, DH), np.float32),
        "x2": np.zeros((2, 2, seq, DH), np.float32),
        "sin_pos": np.repeat(sin, 2, axis=-1)[None, None],
        "cos_pos": np.repeat(cos, 2, axis=-1)[None, None],
    }


@pytest.mark.parametrize("poison,word", [(np.nan, "nan"), (np.inf, "inf")])
def test_a_site_whose_output_is_not_finite_fails_naming_it(poison, word):
    model = hand_site_model()
    sites, _ = find_sites(gs.import_onnx(model), LAYOUTS)
    table = sincos_table(ROWS, DH)
    feeds = pos_feeds(table, 7)
    assert verify_sites(model, sites, table, feeds, np.dtype(np.float32)) == {}  # the site itself is right
    feeds["cos_pos"][0, 0, 3, 2] = poison
    bad = verify_sites(model, sites, table, feeds, np.dtype(np.float32))
    assert list(bad) == ["site_add"] and f"is {word}" in bad["site_add"] and "NaN or inf" in bad["site_add"], bad


def test_a_wrong_sin_path_fails_with_the_error_and_the_bound():
    model = hand_site_model()
    sites, _ = find_sites(gs.import_onnx(model), LAYOUTS)
    table = sincos_table(ROWS, DH)
    feeds = pos_feeds(sincos_table(ROWS, DH, base=5000.0), 7)  # other angles
    bad = verify_sites(model, sites, table, feeds, np.dtype(np.float32))
    assert "numerical check failed: max |graph - reference| = " in bad["site_add"] and " > " in bad["site_add"]


def _site(g: gs.Graph, x, cos, sin, name: str):
    """x * cos + rotate_half(x) * sin, its Add named `name`."""
    mul_x = g.layer(op="Mul", inputs=[x, cos], outputs=[f"{name}_x_cos"])[0]
    mul_r = g.layer(op="Mul", inputs=[interleaved_rotation(g, x), sin], outputs=[f"{name}_rh_sin"])[0]
    y = gs.Variable(f"{name}_y", np.float32, ["B", 2, "S", DH])
    g.nodes.append(gs.Node("Add", name, inputs=[mul_x, mul_r], outputs=[y]))
    return y


def test_a_site_reading_the_shape_of_an_unsized_sites_x_is_still_verified():
    """Site b's x has no static shape (a Reshape to a fed shape): b is skipped with the reason. Site a's cos path
    reads Shape(b's x) (a rotary that takes its length from the key does): its probe walks up to x2 and shape_b.
    Before, b's x was recorded with shape None and a's probe folded that Shape: TypeError, the whole rewrite lost."""
    x, x2 = (gs.Variable(n, np.float32, ["B", 2, "S", DH]) for n in ("x", "x2"))
    shape_b = gs.Variable("shape_b", np.int64, [4])
    sin, cos = (gs.Variable(n, np.float32, [1, 1, "S", DH]) for n in ("sin_pos", "cos_pos"))
    g = gs.Graph(inputs=[x, x2, shape_b, sin, cos], opset=17)
    xb = g.layer(op="Reshape", inputs=[x2, shape_b], outputs=["xb"])[0]
    xb_shape = g.layer(op="Shape", inputs=[xb], outputs=["xb_shape"])[0]
    cos_a = g.layer(op="Expand", inputs=[cos, xb_shape], outputs=["cos_a"])[0]
    g.outputs = [_site(g, x, cos_a, sin, "site_a"), _site(g, xb, cos, sin, "site_b")]
    model = gs.export_onnx(g)
    sites, _ = find_sites(gs.import_onnx(model), LAYOUTS)
    assert sorted(s.name for s in sites) == ["site_a", "site_b"]
    table = sincos_table(ROWS, DH)
    feeds = pos_feeds(table, 7) | {"shape_b": np.array([2, 2, 7, DH], np.int64)}
    bad = verify_sites(model, sites, table, feeds, np.dtype(np.float32))
    assert list(bad) == ["site_b"] and "not [B, H, S, Dh] with static H and Dh" in bad["site_b"], bad
    feeds["cos_pos"] = feeds["cos_pos"] * 2  # the control: site a is really checked (a wrong cos fails it)
    assert "numerical check failed" in verify_sites(model, sites, table, feeds, np.dtype(np.float32))["site_a"]


def roformer_sites(tmp_path, table):
    torch.manual_seed(0)
    return export_module(RoformerSites(table), tmp_path / "m.onnx", 2 * DH, ["q", "k"])


def test_a_nan_in_the_graphs_position_table_fails_every_site_of_the_layer(tmp_path):
    table = sincos_table(ROWS, DH)
    table[10] = np.nan  # a row the probe's sequence (12) reads
    model = roformer_sites(tmp_path, table)
    feeds = {"h": np.random.default_rng(0).standard_normal((2, 12, 2 * DH)).astype(np.float32)}
    new, rep = fuse_rotary(model, "plugin", expected=2, expected_nodes=1, max_len=ROWS, head_dim=DH, feeds=feeds)
    assert rep.found == 2 and rep.rewritten == 0 and len(rep.skipped) == 2
    assert all("is nan (NaN or inf in the site's output" in s["reason"] for s in rep.skipped), rep.skipped
    assert "0/2" in rep.coverage_error() and "NaN" in rep.coverage_error()
    assert not any(n.op_type == identity.PLUGIN_OP for n in new.graph.node)


def test_the_same_graph_with_a_finite_table_is_rewritten(tmp_path):
    """The control for the test above: only the NaN row differs."""
    model = roformer_sites(tmp_path, sincos_table(ROWS, DH))
    feeds = {"h": np.random.default_rng(0).standard_normal((2, 12, 2 * DH)).astype(np.float32)}
    new, rep = fuse_rotary(model, "plugin", expected=2, expected_nodes=1, max_len=ROWS, head_dim=DH, feeds=feeds)
    assert rep.coverage_error() is None and rep.rewritten == 2 and rep.nodes == 1, rep.to_dict()
    assert [n.op_type for n in new.graph.node].count(identity.PLUGIN_OP) == 1


_Site = SimpleNamespace(layout=ROFORMER_INTERLEAVED)  # check_output reads only the site's layout


def test_check_output_bound_is_a_few_ulps_of_x():
    """tol = 8 eps max(1, max|x|): 4 ulps off passes, 16 ulps off fails (a wrong angle is O(|x|) off)."""
    rng = np.random.default_rng(0)
    table = sincos_table(ROWS, DH)
    x = (3 * rng.standard_normal((1, 2, 5, DH))).astype(np.float32)
    ulp = float(np.finfo(np.float32).eps) * float(np.abs(x).max())
    ref = _Site.layout.reference(x, table).astype(np.float64)
    assert check_output(_Site, x, ref + 4 * ulp, table, np.dtype(np.float32)) is None
    assert "numerical check failed" in check_output(_Site, x, ref + 16 * ulp, table, np.dtype(np.float32))
    # the same error is within the bound of float16
    assert check_output(_Site, x, ref + 16 * ulp, table, np.dtype(np.float16)) is None


def test_check_output_wants_the_table_to_cover_the_site():
    table = sincos_table(6, DH)
    x = np.ones((1, 2, 6, DH), np.float32)
    y = _Site.layout.reference(x, table)
    assert check_output(_Site, x, y, table, np.dtype(np.float32)) is None  # S == rows
    x7 = np.ones((1, 2, 7, DH), np.float32)
    assert check_output(_Site, x7, x7, table, np.dtype(np.float32)) == "sequence 7 exceeds the table's 6 rows"
    assert "matching the table width" in check_output(_Site, x[..., :4], x[..., :4], table, np.dtype(np.float32))
    assert "matching the table width" in check_output(_Site, x, x[:, :1], table, np.dtype(np.float32))
