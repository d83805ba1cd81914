"""export.build runs the diagnosis when validation fails: the exit code stays 1, report.md names the first
divergent layer and node, report.json carries the summary, the gate's failure table points at it; a passing
build has none. The fault is written into the exported graph itself (tests.fixtures.faults)."""

from __future__ import annotations

import json

import onnx
import pytest

import export.build
from engines.gate import main as gate
from export.build import main as build
from export.onnx_io import write_model
from export.report.schema import REPORT_JSON, REPORT_MD
from tests.fixtures import faults
from tests.fixtures.tiny_build import FAST

LAYER = 1


@pytest.fixture(scope="module")
def failed(tiny_ckpt, tmp_path_factory):
    """A build whose exported graph has layer 1's FFN output matrix perturbed (1 % of its RMS)."""
    mp = pytest.MonkeyPatch()
    real = export.build.run_export_stage

    def faulty(model, task, out, *args):
        result = real(model, task, out, *args)
        path = out / "model.onnx"
        write_model(faults.perturb_weight(onnx.load(str(path)), LAYER, "ffn_out"), path, external=True)
        return result

    mp.setattr(export.build, "run_export_stage", faulty)
    out = tmp_path_factory.mktemp("diag") / "out"
    try:
        code = build(["--model", str(tiny_ckpt), "--out", str(out), *FAST])
    finally:
        mp.undo()
    return code, out


def test_the_build_fails_and_names_the_layer(failed, capsys):
    code, out = failed
    assert code == 1
    r = json.loads((out / REPORT_JSON).read_text())
    d = r["diagnosis"]
    first = d["first_divergence"]
    assert (first["stage"], first["layer"], first["point"]) == ("layer", LAYER, "ffn_output"), first
    assert d["graph"] == "onnx" and d["reference"] == "pytorch" and d["complete"] is True
    smallest = min(
        (c for c in r["validation"] if c["graph"] == "onnx" and not c["passed"]), key=lambda c: c["batch"] * c["seq"]
    )
    assert (d["batch"], d["seq"]) == (smallest["batch"], smallest["seq"])
    assert f"layer {LAYER} (ffn_output)" in r["failure"] and "diagnosis" in r["timings"]
    md = (out / REPORT_MD).read_text()
    assert "## Where it diverges" in md and f"layer {LAYER} (ffn_output)" in md and first["nodes"][0] in md
    for rel in d["files"].values():
        assert (out / rel).is_file() and rel in r["artifacts_sha256"]


def test_the_gate_points_at_the_diagnosis(failed, capsys):
    _, out = failed
    assert gate([str(out)]) == 1
    text = capsys.readouterr().out
    assert "where:" in text and f"layer {LAYER} (ffn_output)" in text


def test_the_cli_finds_the_same_layer_from_the_build(failed, capsys, tmp_path):
    from export.diagnose.__main__ import main as diagnose

    _, out = failed
    assert diagnose(["--build", str(out), "--json", str(tmp_path / "d.json")]) == 1
    first = json.loads((tmp_path / "d.json").read_text())["first_divergence"]
    assert (first["stage"], first["layer"]) == ("layer", LAYER)


def test_a_passing_build_has_no_diagnosis(built):
    r = json.loads((built / REPORT_JSON).read_text())
    assert "diagnosis" not in r and "diagnosis" not in r["timings"] and not (built / "diagnosis").exists()
