"""The driver over a graph with two layers, one of which cannot be rewritten: counts carry across runs."""

import onnx
import torch

from export.passes.rotary import fuse_rotary
from export.reference import sincos_table
from plugins import identity
from tests.export.passes.rotary.graphs import RoformerSites, export_module

DH, ROWS = 8, 32


class TwoLayers(torch.nn.Module):
    """Layer 0 reads the contract's table; layer 1 one built with another base, so its sites fail the probe."""

    def __init__(self):
        super().__init__()
        self.layer0 = RoformerSites(sincos_table(ROWS, DH))
        self.layer1 = RoformerSites(sincos_table(ROWS, DH, base=5000.0))

    def forward(self, h):
        q0, k0 = self.layer0(h)
        q1, k1 = self.layer1(2 * h)  # another hidden state: another layer
        return q0 + k0, q1 + k1


def test_a_partly_rewritten_graph_keeps_its_counts_on_the_next_run(tmp_path):
    torch.manual_seed(0)
    model = export_module(TwoLayers(), tmp_path / "two.onnx", 2 * DH, ["y0", "y1"])
    onnx.helper.set_model_props(model, {"roformer_trt.max_len": str(ROWS)})
    kw = dict(expected=4, expected_nodes=2, max_len=ROWS, head_dim=DH)
    first, rep1 = fuse_rotary(model, "plugin", **kw)
    assert (rep1.found, rep1.rewritten, rep1.nodes, rep1.already) == (4, 2, 1, 0), rep1.to_dict()
    assert [layer["rewritten"] for layer in rep1.layers] == [True, False]
    assert len(rep1.skipped) == 2 and all("numerical check failed" in s["reason"] for s in rep1.skipped)
    assert "2/4" in rep1.coverage_error()
    assert {p.key: p.value for p in first.metadata_props} == {"roformer_trt.max_len": str(ROWS)}  # kept

    second, rep2 = fuse_rotary(first, "plugin", **kw)
    assert (rep2.found, rep2.already, rep2.rewritten, rep2.nodes) == (2, 2, 2, 1), rep2.to_dict()
    assert [s["site"] for s in rep2.skipped] == [s["site"] for s in rep1.skipped]
    assert all("numerical check failed" in s["reason"] for s in rep2.skipped)
    assert second.graph.SerializeToString() == first.graph.SerializeToString()
    assert [n.op_type for n in second.graph.node].count(identity.PLUGIN_OP) == 1
