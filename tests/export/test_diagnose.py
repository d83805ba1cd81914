"""export.diagnose: the structure is found in every graph form we write, a fault written into one layer's weights
of a 6-layer graph is located to that layer and node (start, middle, end), an unperturbed pair reports
nothing, and memory groups, the time cap and the PyTorch reference behave as documented."""

from __future__ import annotations

import onnx
import pytest

from export.diagnose import diagnose, diagnose_model
from export.diagnose.locate import locate
from export.diagnose.structure import STAGES
from export.passes.lowering import with_rotary_function
from export.passes.precision import convert_precision
from export.passes.rotary import fuse_rotary
from export.validate import Shape, make_inputs
from tests.fixtures import faults

LAYERS = 6
SHAPE = Shape(2, 13, padded_rows=1)


@pytest.fixture(scope="module")
def six(exported):
    """A 6-layer tiny export (dynamo, opset 18), its weights loaded, the torch model and the feeds."""
    path, model, config = exported("dynamo", 18, num_hidden_layers=LAYERS)
    feeds = make_inputs(SHAPE, config.vocab_size, config.type_vocab_size)
    return onnx.load(str(path)), model, config, feeds


def stages_per_layer(structure) -> dict:
    per = {}
    for m in structure.landmarks:
        per.setdefault(m.layer, []).append(m.stage)
    return per


def test_landmarks_of_the_plain_export(six):
    s = locate(six[0])
    assert s.layers == LAYERS and not s.notes
    per = stages_per_layer(s)
    assert per[None] == ["embeddings"]
    assert all(per[k] == list(STAGES[1:6]) for k in range(LAYERS))


@pytest.mark.parametrize("form", ["rope-plugin", "rope-onnx", "fp16", "bf16-emulated", "decomposed-fp16-layernorm"])
def test_the_structure_survives_every_rewrite(six, form):
    plain, _, config = six[:3]
    head_dim = config.hidden_size // config.num_attention_heads
    if form.startswith("rope-"):
        graph, _ = fuse_rotary(plain, form.removeprefix("rope-"), head_dim=head_dim, max_len=96)
    elif form == "decomposed-fp16-layernorm":  # no LayerNormalization op left: ReduceMean ... Add
        graph = faults.layernorm_low(convert_precision(plain, "fp16")[0])
        assert not [n for n in graph.graph.node if n.op_type == "LayerNormalization"]
    else:
        graph, _ = convert_precision(plain, form.removesuffix("-emulated"), emulate=form.endswith("emulated"))
    s = locate(graph)
    assert s.layers == LAYERS and [len(v) for v in stages_per_layer(s).values()] == [1] + [5] * LAYERS, s.notes


def test_an_unperturbed_pair_reports_nothing(six):
    plain, _, _, feeds = six
    d = diagnose(plain, plain, feeds)
    assert d.first_divergence is None and d.to_json()["first_divergence"] is None
    assert len(d.points) == 1 + 5 * LAYERS and all(p.passed and p.scaled_error == 0 for p in d.points)


@pytest.mark.parametrize("layer", [0, LAYERS // 2, LAYERS - 1])
@pytest.mark.parametrize("matrix,point", [("query", "attention_input"), ("ffn_out", "ffn_output")])
def test_a_perturbed_weight_is_located_to_its_layer_and_node(six, layer, matrix, point):
    plain, _, _, feeds = six
    bad = faults.perturb_weight(plain, layer, matrix)
    perturbed = next(n.name for n in bad.graph.node if any("__perturbed_" in x for x in n.input))
    d = diagnose(plain, bad, feeds)
    first = d.first_divergence
    assert (first["stage"], first["layer"], first["point"]) == ("layer", layer, point), first
    assert first["nodes"] == [perturbed] and first["first_node"]["op"] == "MatMul"
    assert all(p.passed for p in d.points if p.layer is None or p.layer < layer)


@pytest.mark.parametrize("layer", [1, LAYERS - 2])
def test_rotary_faults_are_located_against_pytorch(six, layer):
    """The reference is the model itself; the plain export lends its names for the node."""
    plain, model, _, feeds = six
    for bad in (faults.flip_sine(plain, layer), faults.shift_positions(plain, layer)):
        d = diagnose_model(model, "model", bad, feeds, name_reference=plain)
        first = d.first_divergence
        assert (first["stage"], first["layer"], first["point"]) == ("layer", layer, "rotary_output"), first
        assert first["first_node"]["op"] == "Mul"  # the site's product with the (wrong) sine or cosine


def test_an_honest_rewrite_matches_pytorch_at_every_landmark(six):
    plain, model, config, feeds = six
    rope, _ = fuse_rotary(plain, "plugin", head_dim=config.hidden_size // config.num_attention_heads, max_len=96)
    d = diagnose_model(model, "model", with_rotary_function(rope), feeds)
    assert d.first_divergence is None and len(d.points) == 1 + 5 * LAYERS


def test_memory_budget_splits_the_runs_not_the_answer(six):
    plain, _, _, feeds = six
    bad = faults.perturb_weight(plain, 4, "query")
    whole, split = diagnose(plain, bad, feeds), diagnose(plain, bad, feeds, budget_bytes=1)
    assert whole.cost["runs_per_side"] == 2 and split.cost["runs_per_side"] == LAYERS
    assert [p.to_dict() for p in split.points] == [p.to_dict() for p in whole.points]


def test_the_time_cap_stops_between_groups_and_says_where(six):
    plain, _, _, feeds = six
    d = diagnose(plain, plain, feeds, budget_bytes=1, deadline=0.0)
    assert not d.complete and d.reason == "time cap reached after layer 0"
    assert {p.layer for p in d.points} == {None, 0}


@pytest.mark.parametrize("task", ["masked-lm", "multiple-choice"])
def test_task_heads_and_the_choices_axis(exported, task):
    """The MLM head's LayerNorm is not a layer, its logits are a head landmark; [batch, choices, seq] inputs
    reach the layers as [batch x choices, seq]: both compare against PyTorch landmark by landmark."""
    path, model, config = exported("torchscript", 17, task=task)
    shape = Shape(2, 9, padded_rows=1, choices=2 if task == "multiple-choice" else None)
    feeds = make_inputs(shape, config.vocab_size, config.type_vocab_size)
    d = diagnose_model(model, task, onnx.load(str(path)), feeds)
    assert d.first_divergence is None and d.layers == config.num_hidden_layers
    assert [p.name for p in d.points if p.stage == "head"] == ["logits"]
    assert len([p for p in d.points if p.layer is not None]) == 5 * config.num_hidden_layers
    bad = faults.perturb_weight(onnx.load(str(path)), 1, "ffn_out")
    first = diagnose_model(model, task, bad, feeds).first_divergence
    assert (first["stage"], first["layer"], first["point"]) == ("layer", 1, "ffn_output")


def test_layernorm_in_fp16_is_named_not_the_softmax_it_disturbs(tmp_path):
    """On the outlier checkpoint the fp16 LayerNorm overflows in layer 0's attention block; rounding from the
    embeddings' fp16 LayerNorm already nudges that block's Softmax past the per-row bound, but the node named
    is the one where the divergence appears at its size: the LayerNorm's."""
    from export.onnx_export import export_onnx
    from tests.fixtures.checkpoints import add_outliers, make_model, tiny_config

    model = add_outliers(make_model(tiny_config(), "model"))
    path = tmp_path / "model.onnx"
    export_onnx(model, "model", path, 32, "torchscript", 17)
    low, _ = convert_precision(onnx.load(str(path)), "fp16")
    feeds = make_inputs(SHAPE, 99, 2)
    first = diagnose(low, faults.layernorm_low(low), feeds).first_divergence
    assert (first["stage"], first["layer"], first["point"]) == ("layer", 0, "attention_output"), first
    assert first["first_node"]["tensor"] == locate(low).landmarks[3].tensors[0]  # layer 0's attention LayerNorm
    assert first["first_node"]["scaled_error"] > 0.1


def test_a_fault_after_the_last_layer_is_the_head(exported):
    """The masked-LM decoder matrix perturbed: every layer agrees, stage "head", layer null, point "logits"."""
    from onnx import numpy_helper

    from export.diagnose.structure import Graph

    path, model, config = exported("torchscript", 17, task="masked-lm")
    bad = onnx.load(str(path))
    g = Graph(bad)
    node = faults._matmul_above(g, "logits")
    init = next(t for t in bad.graph.initializer if t.name in node.input)
    w = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array(w * 1.01, init.name))
    feeds = make_inputs(SHAPE, config.vocab_size, config.type_vocab_size)
    first = diagnose_model(model, "masked-lm", bad, feeds).first_divergence
    assert (first["stage"], first["layer"], first["point"]) == ("head", None, "logits"), first
