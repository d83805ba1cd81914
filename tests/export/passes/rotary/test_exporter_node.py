"""The rule for the ai.onnx RotaryEmbedding that torch's dynamo exporter writes at opset 23
(rules.ONNX_ROTARY_EMBEDDING): batch-1 caches computed in the graph, which ONNX Runtime refuses at batch > 1.
The pass replaces them by constant tables built from the rotary spec, read through position_ids, after the
probe proved the graph computed that very table; a wrong table, layout or width is a miss with its reason."""

import dataclasses

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from export.families.spec import INTERLEAVED, LayerRotary
from export.passes.rotary import COS_CACHE_NAME, SIN_CACHE_NAME, fuse_rotary
from export.passes.rotary.rules import rotate_half_ref
from export.passes.rotary.tables import sincos
from export.report.thresholds import Thresholds
from export.validate import Shape, grade, ort_session
from plugins import identity
from tests.export.passes.rotary.graphs import fused_rotary_graph
from tests.export.passes.rotary.hf_models import MAX_LEN, halves, modernbert_specs

SEQ = 61  # a prime above ModernBERT's window (16)


def hf_feeds(batch: int = 3, seq: int = SEQ, vocab: int = 64) -> dict[str, np.ndarray]:
    """Right padding: row 1 ends at 40, row 2 at 7; row 0 is full."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab, (batch, seq)).astype(np.int64)
    mask = np.ones_like(ids)
    for row, length in ((1, 40), (2, 7)):
        if row < batch:
            mask[row, length:], ids[row, length:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def hf_out(model, feeds) -> np.ndarray:
    import torch

    with torch.no_grad():
        t = {k: torch.from_numpy(v) for k, v in feeds.items()}
        return model(**t).last_hidden_state.numpy()


def passes_fp32_gate(got: np.ndarray, ref: np.ndarray, feeds) -> dict:
    shape = Shape(*feeds["input_ids"].shape)
    case = grade("rope-onnx", "fp32", shape, {"last_hidden_state": got}, {"last_hidden_state": ref},
                 Thresholds.defaults(), inputs=feeds)  # fmt: skip
    assert case["passed"], case
    return case


@pytest.fixture(scope="module")
def rewritten(modernbert):
    path, model = modernbert("dynamo23")
    raw = onnx.load(str(path))
    new, rep = fuse_rotary(raw, "onnx", expected=4, max_len=MAX_LEN, rotary=modernbert_specs(model.config))
    return raw, new, rep, model


def test_the_raw_export_fails_onnx_runtime_at_batch_3_and_ours_passes(rewritten):
    """Why the rule exists: the exporter's node runs in onnx.reference and in ORT at batch 1 only."""
    raw, new, rep, model = rewritten
    feeds = hf_feeds()
    rot = [n for n in raw.graph.node if n.op_type == "RotaryEmbedding"]
    assert len(rot) == 2 * model.config.num_hidden_layers and all(len(n.input) == 3 for n in rot)
    with pytest.raises(InvalidArgument, match="'cos_cache' and 'sin_cache' are expected to have the same shape"):
        ort_session(raw).run(None, feeds)
    ref = hf_out(model, feeds)
    passes_fp32_gate(ReferenceEvaluator(raw).run(None, feeds)[0], ref, feeds)  # the raw graph is right, though
    row0 = {k: v[:1] for k, v in feeds.items()}
    passes_fp32_gate(ort_session(raw).run(None, row0)[0], ref[:1], row0)

    assert rep.coverage_error() is None and rep.found == rep.rewritten == rep.nodes == 4, rep.to_dict()
    ours = ort_session(new).run(None, feeds)[0]
    passes_fp32_gate(ours, ref, feeds)
    passes_fp32_gate(ReferenceEvaluator(new).run(None, feeds)[0], ref, feeds)  # onnx.reference agrees
    at_max = hf_feeds(batch=2, seq=MAX_LEN)  # every row of the tables
    passes_fp32_gate(ort_session(new).run(None, at_max)[0], hf_out(model, at_max), at_max)


def test_the_rewritten_nodes_read_constant_tables_through_position_ids(rewritten):
    raw, new, rep, model = rewritten
    specs = modernbert_specs(model.config)
    assert specs[0].table.theta != specs[1].table.theta  # a global and a local layer: two tables
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in new.graph.initializer}
    producers = {o: n for n in new.graph.node for o in n.output}
    rot = [n for n in new.graph.node if n.op_type == "RotaryEmbedding"]
    assert not any(n.op_type in ("Cos", "Sin") for n in new.graph.node), "the in-graph table work survived"
    assert all(i.name != "m.rotary_emb.full_attention_inv_freq" for i in new.graph.initializer)
    for i, node in enumerate(rot):
        x, cos, sin, pos = node.input
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"interleaved": 0}  # 4-D x: no num_heads (ONNX and TensorRT read it for 3-D x only)
        table = sincos(specs[i // 2].table, MAX_LEN)  # [P, R] = [sin | cos]
        np.testing.assert_array_equal(inits[cos], table[:, 8:])
        np.testing.assert_array_equal(inits[sin], table[:, :8])
        assert inits[cos].shape == (MAX_LEN, 8) and inits[cos].dtype == np.float32
        assert producers[pos].op_type == "Expand" and pos == rot[0].input[3]  # one position_ids [B, S]
    assert {rot[0].input[1], rot[2].input[1]} == {COS_CACHE_NAME, COS_CACHE_NAME + "_1"}
    assert rot[0].input[2] == SIN_CACHE_NAME  # layer 0 (global) keeps the plain names
    vi = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(new).graph.value_info}
    assert vi[rot[0].input[3]] == onnx.TensorProto.INT64  # the only position id type TensorRT lists
    onnx.checker.check_model(new, full_check=True)
    again, rep2 = fuse_rotary(new, "onnx", expected=4, max_len=MAX_LEN, rotary=specs)
    assert rep2.found == 0 and rep2.already == rep2.rewritten == 4 and rep2.coverage_error() is None
    assert again.graph.SerializeToString() == new.graph.SerializeToString(), "the pass is not idempotent"


def with_table(rot: LayerRotary, **change) -> LayerRotary:
    return dataclasses.replace(rot, table=dataclasses.replace(rot.table, **change))


@pytest.mark.parametrize(
    "change,reason",
    [
        (lambda s: s[::-1], "numerical check failed"),  # global and local theta swapped
        (lambda s: [with_table(x, theta=x.table.theta * 1.5) for x in s], "numerical check failed"),
        (lambda s: [dataclasses.replace(x, layout=INTERLEAVED) for x in s], "but the rotary spec says interleaved"),
        (lambda s: [with_table(x, dim=8) for x in s], "rotates 16 dims, but the rotary spec says R=8"),
        (lambda s: [dataclasses.replace(x, heads=(("query", 4), ("key", 4))) for x in s], "has 2 heads, but"),
    ],
    ids=["theta-swapped", "theta-off", "interleaved", "partial", "heads"],
)
def test_a_wrong_spec_is_a_miss_with_its_reason_not_a_rewrite(modernbert, change, reason):
    path, model = modernbert("dynamo23")
    raw = onnx.load(str(path))
    specs = change(modernbert_specs(model.config))
    new, rep = fuse_rotary(raw, "onnx", expected=4, max_len=MAX_LEN, rotary=specs)
    assert rep.found == 4 and rep.rewritten == 0 and len(rep.skipped) == 4, rep.to_dict()
    assert all(reason in s["reason"] for s in rep.skipped), rep.skipped
    if "numerical" in reason:  # the reason names the table that was tried
        assert f"theta {specs[0].table.theta:g}" in rep.skipped[0]["reason"]
    assert "0/4" in rep.coverage_error()
    assert not any(len(n.input) == 4 for n in new.graph.node if n.op_type == "RotaryEmbedding")


def test_without_feeds_the_probe_stays_within_the_table(modernbert):
    """The default probe sequence (37) is cut to --max-len: a 20-row table is probed at 20 positions."""
    path, model = modernbert("dynamo23")
    _, rep = fuse_rotary(onnx.load(str(path)), "onnx", expected=4, max_len=20, rotary=modernbert_specs(model.config))
    assert rep.coverage_error() is None and rep.rewritten == 4, rep.skipped


def hand_feeds(batch=3, seq=11):
    return {"h": np.random.default_rng(1).standard_normal((batch, seq, 16)).astype(np.float32)}


def hand_reference(model: onnx.ModelProto, feeds, spec: LayerRotary) -> list[np.ndarray]:
    """The hand graph's projections, then rotate_half over the spec's table: [B, H, S, Dh] per tensor."""
    w = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    h, outs = feeds["h"], []
    for i in range(len(model.graph.output)):
        hn, dh = int(w[f"shape{i}"][2]), int(w[f"shape{i}"][3])
        x = (h @ w[f"w{i}"]).reshape(h.shape[0], h.shape[1], hn, dh).transpose(0, 2, 1, 3)
        outs.append(rotate_half_ref(x, sincos(spec.table, 32)))
    return outs


@pytest.mark.parametrize("rotary_dim", [None, 4], ids=["full", "partial"])
def test_query_and_key_of_different_head_counts_and_partial_rotary(rotary_dim):
    """Grouped-query attention (a key of 2 heads beside a query of 4) is one layer of two sites; a node
    rotating 4 of 8 dims keeps rotary_embedding_dim and gets caches of R/2 columns."""
    spec = halves(dim=rotary_dim or 8)
    model = fused_rotary_graph(heads=(4, 2), rotary_dim=rotary_dim)
    new, rep = fuse_rotary(model, "onnx", expected=2, max_len=32, rotary=[spec], feeds=hand_feeds(batch=2))
    assert rep.coverage_error() is None and rep.rewritten == 2 and len(rep.layers) == 1, rep.to_dict()
    rot = [n for n in new.graph.node if n.op_type == "RotaryEmbedding"]
    want = {"interleaved": 0} | ({"rotary_embedding_dim": 4} if rotary_dim else {})
    assert all({a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} == want for n in rot)
    feeds = hand_feeds()
    for got, ref in zip(ort_session(new).run(None, feeds), hand_reference(model, feeds, spec), strict=True):
        np.testing.assert_allclose(got, ref, rtol=0, atol=8 * np.finfo(np.float32).eps * np.abs(ref).max())


@pytest.mark.parametrize(
    "kwargs,reason",
    [
        (dict(interleaved=1), "interleaved=1 (adjacent pairs)"),
        (dict(rank3=True), "rank 3; the rule takes x_BHSDh"),
    ],
)
def test_exporter_nodes_the_rule_does_not_take_are_near_misses(kwargs, reason):
    model = fused_rotary_graph(**kwargs)
    new, rep = fuse_rotary(model, "onnx", expected=2, max_len=32, rotary=[halves()])
    assert rep.found == 0 and len(rep.skipped) == 2 and all(reason in s["reason"] for s in rep.skipped), rep.skipped
    assert new is model


def test_the_probe_tells_a_wrong_theta_from_fp32_rounding():
    """The hand graph computes its table from fp32 angles (theta 10000): the spec's float64 table passes
    the probe within the fp32 bound; a table of theta 10500 does not."""
    model = fused_rotary_graph()
    for theta, ok in ((10000.0, True), (10500.0, False)):
        spec = halves(theta=theta)
        _, rep = fuse_rotary(model, "onnx", expected=2, max_len=32, rotary=[spec], feeds=hand_feeds(batch=2))
        assert (rep.rewritten == 2) is ok, (theta, rep.skipped)


def test_plugin_mode_writes_one_roformer_rotary_per_layer(rewritten, modernbert):
    from export.passes.lowering import with_rotary_function

    raw, _, _, model = rewritten
    specs = modernbert_specs(model.config)
    new, rep = fuse_rotary(raw, "plugin", expected=4, expected_nodes=2, max_len=MAX_LEN, rotary=specs)
    assert rep.coverage_error() is None and rep.nodes == 2, rep.to_dict()
    nodes = [n for n in new.graph.node if n.op_type == identity.PLUGIN_OP]
    for node, spec in zip(nodes, specs, strict=True):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs[identity.ATTR_INTERLEAVED] == 0 and attrs[identity.ATTR_NUM_TENSORS] == 2
        table = next(t for t in new.graph.initializer if t.name == node.input[-1])
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(table), sincos(spec.table, MAX_LEN))
    feeds = hf_feeds()
    passes_fp32_gate(ort_session(with_rotary_function(new)).run(None, feeds)[0], hf_out(model, feeds), feeds)
