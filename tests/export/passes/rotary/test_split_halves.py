"""The rule for HF's decomposed rotate_half (rules.SPLIT_HALVES): Slice/Neg/Concat/Mul/Add, as
`--exporter torchscript` and dynamo below opset 23 write it, with its near misses (the halves cut on another
axis or at another point, another table, a partial rotary told as full) and the cases it must take
(grouped-query heads, partial rotary, TorchScript's split point computed from the head size)."""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch

from export.passes.graph_utils import fold_ints
from export.passes.lowering import with_rotary_function
from export.passes.rotary import fuse_rotary
from export.passes.rotary.rules import SPLIT_HALVES
from export.passes.rotary.tables import fp32_sincos_error
from export.validate import ort_session
from tests.export.passes.rotary.graphs import HalvesAttention, export_module
from tests.export.passes.rotary.hf_models import MAX_LEN, modernbert_specs
from tests.export.passes.rotary.hf_models import halves as spec
from tests.export.passes.rotary.test_exporter_node import hf_feeds, hf_out, passes_fp32_gate


@pytest.mark.parametrize("form", ["torchscript", "dynamo18"])
def test_modernbert_decomposed_rotary_is_rewritten_and_runs_at_any_batch(modernbert, form):
    path, model = modernbert(form)
    raw = onnx.load(str(path))
    assert sum(n.op_type == "Neg" for n in raw.graph.node) == 4  # rotate_half of q and k in 2 layers
    new, rep = fuse_rotary(raw, "onnx", expected=4, max_len=MAX_LEN, rotary=modernbert_specs(model.config))
    assert rep.coverage_error() is None and rep.found == rep.rewritten == rep.nodes == 4, rep.to_dict()
    assert [layer["rewritten"] for layer in rep.layers] == [True, True]
    ops = [n.op_type for n in new.graph.node]
    assert ops.count("RotaryEmbedding") == 4 and "Neg" not in ops and "Cos" not in ops and "Sin" not in ops
    onnx.checker.check_model(new, full_check=True)
    feeds = hf_feeds()
    passes_fp32_gate(ort_session(new).run(None, feeds)[0], hf_out(model, feeds), feeds)


def halves(tmp_path, **kwargs) -> tuple[onnx.ModelProto, torch.nn.Module]:
    torch.manual_seed(0)
    module = HalvesAttention(**kwargs).eval()
    return export_module(module, tmp_path / "m.onnx", 16, ["q", "k"]), module


def feeds(batch=2, seq=11):
    return {"h": np.random.default_rng(0).standard_normal((batch, seq, 16)).astype(np.float32)}


@pytest.mark.parametrize("mode", ["onnx", "plugin"])
def test_grouped_query_heads_and_the_module_itself(tmp_path, mode):
    """A key of 2 heads beside a query of 4 is one layer of two sites (one RoformerRotary node over both in
    plugin mode); the rewrite equals the module."""
    model, module = halves(tmp_path, heads_q=4, heads_k=2)
    new, rep = fuse_rotary(model, mode, expected=2, expected_nodes=1, max_len=32, rotary=[spec()], feeds=feeds())
    assert rep.coverage_error() is None and len(rep.layers) == 1 and rep.layers[0]["rewritten"], rep.to_dict()
    graph = with_rotary_function(new) if mode == "plugin" else new
    f = feeds(batch=3, seq=29)
    with torch.no_grad():
        want = [t.numpy() for t in module(torch.from_numpy(f["h"]))]
    for got, ref in zip(ort_session(graph).run(None, f), want, strict=True):
        assert got.shape == ref.shape
        # the module's fp32 angles vs our float64 table: the fp32 bound at 29 positions, plus fp32 rounding
        tol = 2 * np.abs(ref).max() * fp32_sincos_error(spec().table, 29) + 1e-6
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol)


def test_partial_rotary_rotates_the_sliced_head(tmp_path):
    """HF's partial rotary rotates q[..., :R] and concatenates the rest: the site's x is the slice, of R dims."""
    model, _ = halves(tmp_path, rotary_dim=4)
    new, rep = fuse_rotary(model, "onnx", expected=2, max_len=32, rotary=[spec(dim=4)], feeds=feeds())
    assert rep.coverage_error() is None, rep.to_dict()
    rot = [n for n in new.graph.node if n.op_type == "RotaryEmbedding"]
    assert [next(t for t in new.graph.initializer if t.name == n.input[1]).dims for n in rot] == [[32, 2]] * 2
    _, rep = fuse_rotary(model, "onnx", expected=2, max_len=32, rotary=[spec()], feeds=feeds())
    assert rep.rewritten == 0 and all("rotates 4 dims, but the rotary spec says R=8 (layer 0)" in s["reason"]
                                      for s in rep.skipped), rep.skipped  # fmt: skip


@pytest.mark.parametrize(
    "kwargs,reason",
    [
        (dict(axis=2), "expected a slice of the last axis"),  # the halves of the sequence axis
        (dict(split_at=3), "x is split at 3, not at half of its head size 8"),
        (dict(theta=5000.0), "numerical check failed"),  # another table than the spec's
    ],
    ids=["wrong-axis", "wrong-split-point", "wrong-table"],
)
def test_near_misses(tmp_path, kwargs, reason):
    model, _ = halves(tmp_path, **kwargs)
    new, rep = fuse_rotary(model, "onnx", expected=2, max_len=32, rotary=[spec()], feeds=feeds())
    assert rep.rewritten == 0 and len(rep.skipped) == 2 and all(reason in s["reason"] for s in rep.skipped), rep.skipped
    assert not any(n.op_type == "RotaryEmbedding" for n in new.graph.node)


def test_the_split_point_torchscript_computes_is_folded_from_the_static_head_size():
    """Unsqueeze(Cast(Div(Gather(Shape(x), 3), 2))) is 4 for x [B, H, S, 8]; a dynamic dim is not folded."""
    x = gs.Variable("x", np.float32, ["B", 2, "S", 8])
    g = gs.Graph(inputs=[x], opset=17)
    shape = g.layer(op="Shape", inputs=[x], outputs=["shape"])[0]

    def half_of(axis: int):
        dim = g.layer(op="Gather", inputs=[shape, np.array(axis)], outputs=["dim"], attrs={"axis": 0})[0]
        half = g.layer(op="Div", inputs=[dim, np.array(2)], outputs=["half"])[0]
        cast = g.layer(op="Cast", inputs=[half], outputs=["cast"], attrs={"to": onnx.TensorProto.INT64})[0]
        return g.layer(op="Unsqueeze", inputs=[cast, np.array([0])], outputs=["starts"])[0]

    assert fold_ints(half_of(3)) == [4] and fold_ints(half_of(-1)) == [4]
    assert fold_ints(half_of(2)) is None  # the sequence: symbolic
    assert fold_ints(shape) is None and fold_ints(gs.Constant("c", np.array([9, 9]))) == [9, 9]
    as_float = g.layer(op="Cast", inputs=[half_of(3)], outputs=["f"], attrs={"to": onnx.TensorProto.FLOAT})[0]
    assert fold_ints(as_float) is None  # only integer arithmetic is folded


def test_the_rule_states_its_source():
    assert "rotate_half" in SPLIT_HALVES.source and SPLIT_HALVES.interleaved == 0 and not SPLIT_HALVES.declined
