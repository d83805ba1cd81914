"""The pass's report: the `rewrite` section's fields and the coverage verdict the CLI turns into exit 1."""

from export.passes.rotary.results import PassReport
from export.report.schema import RewriteSection


def test_to_dict_is_the_rewrite_section():
    assert set(PassReport("plugin").to_dict()) == set(RewriteSection.__annotations__)
    rep = PassReport("onnx", expected=4, found=4, rewritten=4, nodes=4, already=0)
    assert rep.to_dict() == {
        "mode": "onnx",
        "expected": 4,
        "expected_nodes": None,
        "found": 4,
        "rewritten": 4,
        "nodes": 4,
        "already_rewritten": 0,
        "skipped": [],
        "layers": [],
    }


def test_coverage_complete():
    assert PassReport("plugin", expected=4, expected_nodes=2, rewritten=4, nodes=2).coverage_error() is None
    assert PassReport("onnx", expected=4, expected_nodes=2, rewritten=4, nodes=4).coverage_error() is None
    assert PassReport("plugin").coverage_error() is None  # nothing expected: the caller did not say


def test_coverage_counts_plugin_nodes_per_layer():
    err = PassReport("plugin", expected=4, expected_nodes=2, rewritten=4, nodes=4).coverage_error()
    assert err == (
        "rotary rewrite: 4 RoformerRotary nodes for 2 layers; sites of one layer were not grouped into one node"
    )


def test_coverage_shortfall_names_sites_and_reasons():
    rep = PassReport("plugin", expected=4, rewritten=2)
    assert "2/4 sites rewritten and no candidate found" in rep.coverage_error()
    assert "no RoFormer (interleaved) rotary embedding" in rep.coverage_error()
    rep.skipped = [{"site": "add_1", "reason": "a near miss"}] + [
        {"layer": f"layer {i}", "site": f"add_{i + 2}", "reason": f"reason {i}"} for i in range(7)
    ]
    err = rep.coverage_error()
    assert err.startswith("rotary rewrite: 2/4 sites rewritten; skipped ? add_1: a near miss; layer 0 add_2: reason 0")
    assert "reason 4" in err and "reason 5" not in err  # the first six
