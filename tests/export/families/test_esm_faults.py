"""Faults of what the ESM-2 family declares, written into its exported graph (tests/fixtures/faults.py), judged by
the default fp32 gate and located by export.diagnose, on a tiny ESM with initializer_range 0.2 (attention that
depends on position, as a trained model's does). One torchscript export, shared by every case:
- token dropout without its 0.88: caught, first seen at the embeddings;
- the query scale (head_dim^-0.5) dropped, or applied a second time after the rotary (a port that also keeps the
  attention's own 1/sqrt(Dh)): caught, located in the layer it was written into;
- the query scale moved after the rotary: NOT a defect. The rotation is linear (R(s q) = s R(q)), so the outputs
  are those of the honest graph, and the gate rightly passes it; export.diagnose still shows where the graph's
  intermediate tensors leave PyTorch's (that layer's rotary_output, which PyTorch computes on the scaled query).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from export.checkpoint.rebuild import load_checkpoint
from export.diagnose import diagnose_model
from export.onnx_export import export_onnx
from export.report.thresholds import DEFAULTS
from export.validate import Shape, make_inputs, ort_session
from tests.export.families.test_modernbert_faults import judged
from tests.fixtures import faults

MAX_LEN = 96
SENSITIVE = {"initializer_range": 0.2}


@pytest.fixture(scope="module")
def sensitive(hf_ckpt, tmp_path_factory):
    folder, _ = hf_ckpt("esm", **SENSITIVE)
    ck = load_checkpoint(folder)
    path = tmp_path_factory.mktemp("esm-faults") / "model.onnx"
    export_onnx(ck.model, ck.task, path, MAX_LEN, "torchscript")
    return ck, onnx.load(str(path))


def first_divergence(ck, graph) -> dict:
    feeds = make_inputs(Shape(2, 61, 1), ck.facts.vocab_size, ck.facts.type_vocab_size)
    first = diagnose_model(ck.model, ck.task, graph, feeds).first_divergence
    assert first is not None
    return {k: first[k] for k in ("stage", "layer", "point")}


def test_the_honest_export_passes(sensitive):
    ck, graph = sensitive
    ok, scaled = judged(ck, graph)
    assert ok and scaled < DEFAULTS["fp32"].rtol


@pytest.mark.parametrize(
    "name,where",
    [
        ("token-dropout-0.88", {"stage": "embeddings", "layer": None, "point": "embeddings"}),
        ("query-scale-drop-l1", {"stage": "layer", "layer": 1, "point": "rotary_output"}),
        ("query-scale-twice-l1", {"stage": "layer", "layer": 1, "point": "attention_output"}),
        ("query-scale-drop-l2", {"stage": "layer", "layer": 2, "point": "rotary_output"}),
    ],
)
def test_each_fault_is_caught_and_located(sensitive, name, where):
    ck, graph = sensitive
    if name == "token-dropout-0.88":
        bad = faults.set_scalar(graph, 0.88, 1.0)
    else:
        how, layer = name.split("-")[2], int(name[-1])
        bad = faults.move_query_scale(graph, layer, how)
    ok, scaled = judged(ck, bad)
    assert not ok and scaled > DEFAULTS["fp32"].rtol, (name, scaled)
    assert first_divergence(ck, bad) == where


@pytest.mark.parametrize("mode", ["onnx", "plugin"])
def test_faults_in_the_rewritten_graph_are_caught_and_located(sensitive, tmp_path, mode):
    """The same faults in the rotary pass's graph: its query Mul still sits before the rewritten node of each layer
    (RotaryEmbedding or RoformerRotary), and the token dropout constant is untouched by the pass."""
    from export.passes.lowering import with_rotary_function
    from export.stages.rope import rewrite_file

    ck, graph = sensitive
    src, dst = tmp_path / "model.onnx", tmp_path / f"model.rope-{mode}.onnx"
    onnx.save(graph, str(src))
    assert rewrite_file(src, dst, mode, ck.config, MAX_LEN, ck.task)["coverage_error"] is None
    rewritten = onnx.load(str(dst))
    assert judged(ck, rewritten)[0]
    lowered = (lambda g: with_rotary_function(g)) if mode == "plugin" else (lambda g: g)
    for bad, where in (
        (faults.set_scalar(rewritten, 0.88, 1.0), {"stage": "embeddings", "layer": None, "point": "embeddings"}),
        (faults.move_query_scale(rewritten, 2, "drop"), {"stage": "layer", "layer": 2, "point": "rotary_output"}),
    ):
        assert not judged(ck, bad)[0]
        assert first_divergence(ck, lowered(bad)) == where


def test_the_query_scale_after_the_rotary_is_the_same_function(sensitive):
    """Moved after the rotary in every layer, the scale leaves the outputs as they were (within fp32 rounding) and
    passes the gate: this placement is not a fault any output comparison could catch, and none is claimed."""
    ck, graph = sensitive
    moved = graph
    for layer in range(ck.facts.layers):
        moved = faults.move_query_scale(moved, layer, "after")
    assert sum(n.op_type == "Mul" and n.name.startswith("fault_scale") for n in moved.graph.node) == 3
    feeds = make_inputs(Shape(3, 61, 2), ck.facts.vocab_size, ck.facts.type_vocab_size)
    a, b = (ort_session(g).run(None, feeds)[0] for g in (graph, moved))
    assert np.abs(a - b).max() <= 1e-6 * np.abs(a).max()
    assert judged(ck, moved)[0]
    assert first_divergence(ck, moved) == {"stage": "layer", "layer": 0, "point": "rotary_output"}


def test_the_faults_refuse_a_graph_without_what_they_change(sensitive):
    _, graph = sensitive
    with pytest.raises(ValueError, match="no Mul by the constant 0.55 in the graph"):
        faults.set_scalar(graph, 0.55, 1.0)
    with pytest.raises(ValueError, match="how 'before'"):
        faults.move_query_scale(graph, 0, "before")
