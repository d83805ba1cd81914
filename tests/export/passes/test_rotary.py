"""The rotary pass over the exporter x opset x dtype grid and every variant: counts, accuracy, idempotence,
and graphs that must not be rewritten."""

import onnx
import pytest
import torch

from export.passes.lowering import with_rotary_function
from export.passes.rotary import fuse_rotary
from export.reference import sincos_table
from export.report.thresholds import Thresholds
from export.spec import ExportSpec
from export.stages.rope import expected_sites
from export.validate import Shape, TorchReference, grade, make_inputs, ort_session
from plugins.identity import PLUGIN_OP
from tests.export.passes.rotary.graphs import NeoXAttention

GRID = [("torchscript", 17), ("torchscript", 18), ("torchscript", 20), ("dynamo", 18), ("dynamo", 20), ("dynamo", 23)]
SHAPES = [Shape(1, 1), Shape(3, 13, 2)]


def run_pass_and_check(path, model, config, task, precision, mode, max_len=96):
    src = onnx.load(str(path))
    layers = config.num_hidden_layers
    new, rep = fuse_rotary(
        src,
        mode,
        expected=expected_sites(config),
        expected_nodes=layers,
        max_len=max_len,
        head_dim=config.hidden_size // config.num_attention_heads,
    )
    assert rep.coverage_error() is None, rep.to_dict()
    assert rep.rewritten == rep.expected == layers * (3 if config.rotary_value else 2)
    ops = [n.op_type for n in new.graph.node]
    assert ops.count(PLUGIN_OP if mode == "plugin" else "RotaryEmbedding") == (
        layers if mode == "plugin" else rep.expected
    )
    assert not any(n.op_type == "Neg" for n in new.graph.node), "a rotary chain survived the rewrite"
    assert not new.functions  # the TensorRT-bound file carries no function
    onnx.checker.check_model(new, full_check=True)
    if mode == "plugin":  # value_info (dtype + shape) for every output of our nodes
        vi = {v.name for v in new.graph.value_info}
        assert all(o in vi for n in new.graph.node if n.op_type == PLUGIN_OP for o in n.output)
        k = 3 if config.rotary_value else 2
        for n in new.graph.node:
            if n.op_type == PLUGIN_OP:  # TensorRT asks getNbOutputs() before it sees inputs: the count is an attribute
                assert {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}["num_tensors"] == k
                assert len(n.input) == k + 1 and len(n.output) == k
    graph = with_rotary_function(new) if mode == "plugin" else new
    sess, ref = ort_session(graph), TorchReference(model, task)
    th = Thresholds.defaults()
    for shape in SHAPES:
        if task == "multiple-choice":
            shape = Shape(shape.batch, shape.seq, shape.padded_rows, choices=2)
        inputs = make_inputs(shape, config.vocab_size, config.type_vocab_size)
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs), strict=True))
        case = grade(f"rope-{mode}", precision, shape, got, ref(shape, inputs), th)
        assert case["passed"], case
    again, rep2 = fuse_rotary(
        new,
        mode,
        expected=rep.expected,
        expected_nodes=layers,
        max_len=max_len,
        head_dim=config.hidden_size // config.num_attention_heads,
    )
    assert rep2.found == 0 and rep2.rewritten == rep.expected and rep2.coverage_error() is None
    assert again.graph.SerializeToString() == new.graph.SerializeToString(), "pass is not idempotent"
    return rep


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("exporter,opset", GRID)
def test_grid(exported, exporter, opset, dtype):
    path, model, config = exported(exporter, opset, dtype=dtype)
    precision = "fp32" if dtype == torch.float32 else "fp16"
    for mode in ("plugin", "onnx"):
        run_pass_and_check(path, model, config, "model", precision, mode)


VARIANTS = [
    ("model", dict(rotary_value=True)),
    ("masked-lm", dict(embedding_size=24)),
    ("sequence-classification", dict(hidden_size=64, intermediate_size=64)),  # head dim 32
    ("token-classification", dict(hidden_size=128, intermediate_size=64)),  # head dim 64
    ("question-answering", dict(hidden_size=256, intermediate_size=64)),  # head dim 128
    ("multiple-choice", dict()),
]


@pytest.mark.parametrize("exporter,opset", [("torchscript", 17), ("dynamo", 18)])
@pytest.mark.parametrize("task,overrides", VARIANTS, ids=[v[0] + "-" + "-".join(v[1]) for v in VARIANTS])
def test_variants(exported, exporter, opset, task, overrides):
    path, model, config = exported(exporter, opset, task=task, **overrides)
    assert ExportSpec(task).output_names == tuple(o.name for o in onnx.load(str(path)).graph.output)
    for mode in ("plugin", "onnx"):
        run_pass_and_check(path, model, config, task, "fp32", mode)


def test_wrong_angles_are_detected_and_not_rewritten(tmp_path):
    """Same structure, other numbers (a table built with base 5000): every site fails its numerical check."""
    from export.onnx_export import export_onnx
    from tests.fixtures.checkpoints import make_model, tiny_config

    model = make_model(tiny_config(), "model")
    with torch.no_grad():
        w = model.encoder.embed_positions.weight
        w.copy_(torch.from_numpy(sincos_table(w.shape[0], w.shape[1], base=5000.0)))
    export_onnx(model, "model", tmp_path / "m.onnx", 64, "torchscript", 17)
    src = onnx.load(str(tmp_path / "m.onnx"))
    new, rep = fuse_rotary(src, "plugin", expected=4, expected_nodes=2, max_len=64, head_dim=16)
    assert rep.found == 4 and rep.rewritten == 0 and len(rep.skipped) == 4
    assert all("numerical check failed" in s["reason"] for s in rep.skipped)
    assert "0/4" in rep.coverage_error()
    assert not any(n.op_type == PLUGIN_OP for n in new.graph.node)


def test_neox_rotate_half_is_rewritten_with_the_split_halves_rule(tmp_path):
    torch.onnx.export(
        NeoXAttention(),
        (torch.randn(1, 5, 16),),
        str(tmp_path / "neox.onnx"),
        dynamo=False,
        opset_version=17,
        input_names=["h"],
        dynamic_axes={"h": {0: "batch", 1: "sequence"}},
    )
    src = onnx.load(str(tmp_path / "neox.onnx"))
    new, rep = fuse_rotary(src, "onnx", expected=1, max_len=16, head_dim=8)
    assert rep.found == rep.rewritten == 1 and rep.coverage_error() is None, rep.to_dict()
    assert [n.op_type for n in new.graph.node].count("RotaryEmbedding") == 1
    assert not any(n.op_type == "Neg" for n in new.graph.node)


def test_bert_has_nothing_to_rewrite(tmp_path):
    from transformers import BertConfig, BertModel

    bert = BertModel(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20)
    ).eval()
    ids = torch.randint(0, 50, (1, 5))

    class Ids(torch.nn.Module):  # positional ids only: transformers 5 forwards extra positionals oddly
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids):
            return self.bert(input_ids=input_ids).last_hidden_state

    with torch.no_grad():
        torch.onnx.export(
            Ids().eval(),
            (ids,),
            str(tmp_path / "bert.onnx"),
            dynamo=False,
            opset_version=17,
            input_names=["input_ids"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}},
        )
    src = onnx.load(str(tmp_path / "bert.onnx"))
    new, rep = fuse_rotary(src, "plugin", expected=4, max_len=16, head_dim=8)
    assert rep.found == 0 and rep.rewritten == 0
    assert "no RoFormer (interleaved) rotary embedding" in rep.coverage_error()
    assert new.graph.SerializeToString() == src.graph.SerializeToString()
