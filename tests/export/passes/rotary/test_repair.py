"""The repair of batch-1 RotaryEmbedding caches (export/passes/rotary/repair.py): the raw node fails ONNX Runtime at
batch 3, the repaired one runs there and equals onnx.reference on the raw graph (which broadcasts the caches) and HF;
every form of the class is repaired (interleaved or not, 3-D or 4-D x, partial rotary), nothing else is touched,
and the repair adds nodes only (taking them out gives the raw graph back, byte for byte)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from export.passes.rotary import fuse_rotary
from export.passes.rotary.repair import PREFIX, batch_one_nodes, expand_batch_one_caches
from export.validate import ort_session
from tests.export.passes.rotary.graphs import fused_rotary_graph
from tests.export.passes.rotary.hf_models import MAX_LEN, modernbert_specs
from tests.export.passes.rotary.test_exporter_node import hand_feeds, hf_feeds, hf_out, passes_fp32_gate
from tests.fixtures.opset23 import REFUSED, unrepaired


def repaired(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out, expand_batch_one_caches(out)


def test_the_dynamo_export_fails_at_batch_3_and_repaired_runs_there_like_hf(modernbert):
    """The tiny ModernBERT's opset-23 export: 4 nodes with batch-1 caches; ORT refuses batch 3 before, and matches HF
    at the fp32 gate after, as onnx.reference does; the repair is only the added nodes, and a second one is a no-op."""
    path, model = modernbert("dynamo23")
    raw = onnx.load(str(path))
    feeds = hf_feeds(seq=23)  # above the window (16); onnx.reference's time grows with it
    with pytest.raises(InvalidArgument, match=REFUSED):
        ort_session(raw).run(None, feeds)
    fixed, n = repaired(raw)
    assert n == len(batch_one_nodes(raw)) == 2 * model.config.num_hidden_layers
    onnx.checker.check_model(fixed, full_check=True)
    ref = hf_out(model, feeds)
    passes_fp32_gate(ort_session(fixed).run(None, feeds)[0], ref, feeds)
    passes_fp32_gate(ReferenceEvaluator(fixed).run(None, feeds)[0], ref, feeds)
    assert unrepaired(fixed).SerializeToString() == raw.SerializeToString()
    again, n2 = repaired(fixed)
    assert n2 == 0 and not batch_one_nodes(fixed) and again.SerializeToString() == fixed.SerializeToString()


def test_the_rotary_pass_rewrites_the_repaired_nodes_and_drops_the_expands(modernbert):
    path, model = modernbert("dynamo23")
    fixed, _ = repaired(onnx.load(str(path)))
    new, rep = fuse_rotary(fixed, "onnx", expected=4, max_len=MAX_LEN, rotary=modernbert_specs(model.config))
    assert rep.coverage_error() is None and rep.rewritten == 4, rep.to_dict()
    assert not [n.name for n in new.graph.node if n.name.startswith(PREFIX)]
    feeds = hf_feeds()
    passes_fp32_gate(ort_session(new).run(None, feeds)[0], hf_out(model, feeds), feeds)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"interleaved": 1}, {"rank3": True}, {"rotary_dim": 4}],
    ids=["halves-4d", "interleaved", "3d-x", "partial"],
)
def test_every_form_with_batch_one_caches_is_repaired(kwargs):
    """The class, not the exporter's one form: any RotaryEmbedding without position_ids reading [1, S, R/2] caches
    (the hand graph of tests/export/passes/rotary/graphs.py: a query of 4 heads and a key of 2)."""
    raw = fused_rotary_graph(**kwargs)
    feeds = hand_feeds(batch=3)
    with pytest.raises(InvalidArgument, match=REFUSED):
        ort_session(raw).run(None, feeds)
    fixed, n = repaired(raw)
    assert n == 2
    want = ReferenceEvaluator(raw).run(None, feeds)  # onnx.reference broadcasts the raw caches
    for got, ref in zip(ort_session(fixed).run(None, feeds), want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6 * np.abs(ref).max())


def with_position_ids(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each RotaryEmbedding given a 4th input (position_ids [B, S]): its caches are then [max_pos, R/2] tables."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.op_type == "RotaryEmbedding":
            node.input.append("pos_ids")
    out.graph.input.append(helper.make_tensor_value_info("pos_ids", onnx.TensorProto.INT64, ["batch", "sequence"]))
    return out


def batch_of_one(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with its input's batch fixed to 1: batch-1 caches are then what the op asks for."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    return out


@pytest.mark.parametrize("change", [with_position_ids, batch_of_one], ids=["position-ids", "batch-1-graph"])
def test_nodes_outside_the_class_are_left_as_they_are(change):
    model = change(fused_rotary_graph())
    fixed, n = repaired(model)
    assert n == 0 and fixed.SerializeToString() == model.SerializeToString()


def test_names_the_graph_already_uses_are_not_reused():
    raw = fused_rotary_graph()
    taken = f"{PREFIX}_ones"
    raw.graph.initializer.append(onnx.numpy_helper.from_array(np.array([7], np.int64), taken))
    fixed, n = repaired(raw)
    assert n == 2
    defined = [t.name for t in fixed.graph.initializer] + [o for n in fixed.graph.node for o in n.output]
    assert len(defined) == len(set(defined))  # SSA holds
    assert onnx.numpy_helper.to_array(next(t for t in fixed.graph.initializer if t.name == taken)).tolist() == [7]
    feeds = hand_feeds(batch=3)
    ort_session(fixed).run(None, feeds)
