"""The rotary pass over the exporter x opset x dtype grid (counts, accuracy, idempotence: check.py) and graphs that
must not be rewritten. The task heads and config variants: test_rotary_variants.py."""

import onnx
import pytest
import torch

from export.passes.rotary import fuse_rotary
from export.reference import sincos_table
from plugins.identity import PLUGIN_OP
from tests.export.passes.rotary.check import run_pass_and_check
from tests.export.passes.rotary.graphs import NeoXAttention

GRID = [("torchscript", 17), ("torchscript", 18), ("torchscript", 20), ("dynamo", 18), ("dynamo", 20), ("dynamo", 23)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("exporter,opset", GRID)
def test_grid(exported, exporter, opset, dtype):
    path, model, config = exported(exporter, opset, dtype=dtype)
    precision = "fp32" if dtype == torch.float32 else "fp16"
    for mode in ("plugin", "onnx"):
        run_pass_and_check(path, model, config, "model", precision, mode)


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
