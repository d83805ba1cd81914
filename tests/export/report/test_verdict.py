"""export.report.verdict, the one verdict: each rule on a synthetic report (files are not read without a build_dir),
and the three callers (export.build, engines.gate, read_build) agreeing on the same report."""

from __future__ import annotations

import copy

import pytest

from export.errors import VerificationError
from export.report.schema import Report, key_precision
from export.report.thresholds import DEFAULTS, Thresholds
from export.report.verdict import build_error, judge, passed, read_build

H = "a" * 64


def case(graph: str, precision: str, err: float, **stats) -> dict:
    t = DEFAULTS[precision]
    out = {
        "max_abs": err * 5,
        "mean_abs": err / 2,
        "scaled_error": err,
        "cosine": 0.9999999,
        "row_cosine": 1 - 1e-12,
        "n_nan": 0,
        **t.to_dict(),
        "passed": True,
        **stats,
    }
    return {
        "graph": graph,
        "precision": precision,
        "batch": 2,
        "seq": 16,
        "choices": None,
        "padded_rows": 0,
        "outputs": {"last_hidden_state": out},
        "passed": True,
    }


GOOD = dict(
    command=[],
    version="0",
    created="x",
    passed=True,
    precision={"precision": "bf16", "source": "model.rope-plugin.onnx"},
    artifacts={
        "onnx": "model.onnx",
        "rope-plugin.bf16": "model.rope-plugin.bf16.onnx",
        "rope-plugin.bf16-emulated": "model.rope-plugin.bf16-emulated.onnx",
    },
    artifacts_sha256={"model.onnx": H, "model.rope-plugin.bf16.onnx": H, "model.rope-plugin.bf16-emulated.onnx": H},
    validation=[
        case("onnx", "fp32", 5e-7),
        case("rope-plugin.bf16", "bf16", 2e-2),
        case("rope-plugin.bf16-emulated", "bf16", 2e-2),
    ],
)


def verdict(**changes) -> list:
    fields = copy.deepcopy(GOOD)
    fields.update(changes)
    return judge(Report(**fields), Thresholds.defaults())


def failed(checks) -> str:
    return " | ".join(c.message for c in checks if not c.passed)


def test_a_good_report_passes():
    assert passed(verdict())


REWRITE = {"mode": "plugin", "expected": 4, "rewritten": 4, "nodes": 2, "expected_nodes": 2}
RULES = [
    ({"validation": []}, "no validation cases"),
    ({"artifacts": {}, "artifacts_sha256": {}}, "is not an artifact of the report"),
    ({"artifacts_sha256": {}}, "has no recorded sha256"),
    ({"passed": False}, "marked itself not passed"),
    ({"failure": "rotary rewrite: 3/4"}, "the build failed"),
    ({"validation_skipped": True}, "not validated"),
    ({"engine": {"status": "failed", "reason": "parser"}}, "engine stage failed"),
    # what the stages recorded in their own sections, with no `failure` line (issue 27, failure 3)
    ({"quantization": {"format": "int8", "structure_problems": ["MatMul_3: no Q/DQ"]}}, "departs from its placement"),
    ({"quantization": {"format": "int8", "structure_problems": "MatMul_3"}}, "departs from its placement"),
    ({"quantization": {"format": "int8"}}, "records no structure check"),
    ({"rewrite": REWRITE | {"rewritten": 3}}, "3/4 rotary sites rewritten"),
    ({"rewrite": REWRITE | {"nodes": 3}}, "3 RoformerRotary nodes for 2 layers"),
    ({"rewrite": REWRITE | {"rewritten": None}}, "records no site counts"),
    # the precision a key names must be the one the report's sections record
    ({"precision": None}, "precision.precision is None"),
    ({"precision": {"precision": "fp16"}}, "precision.precision is 'fp16'"),
]


@pytest.mark.parametrize("changes,why", RULES)
def test_each_rule_fails_the_verdict(changes, why):
    checks = verdict(**changes)
    assert not passed(checks) and why in failed(checks)


def test_honest_stage_records_pass():
    assert passed(verdict(rewrite=REWRITE))
    assert passed(verdict(rewrite=REWRITE | {"mode": "onnx", "nodes": 0}))  # one node per layer: plugin only


@pytest.mark.parametrize(
    "key,sections,why",
    [
        ("rope-plugin.fp16", {}, "precision.precision is None"),
        ("rope-plugin.int8", {"precision": {"precision": "int8"}}, "quantization.format is None"),
        (
            "onnx.int8-cpu",
            {"quantization": {"format": "fp8", "structure_problems": []}},
            "quantization.format is 'fp8'",
        ),
        ("rope-plugin.fp8", {"quantization": {"format": "int8", "structure_problems": []}}, "format is 'int8'"),
        ("engine-fp16", {"engine": {"status": "built", "engines": [{"precision": "fp32"}]}}, "records ['fp32']"),
    ],
)
def test_a_key_whose_precision_the_report_does_not_record_fails(key, sections, why):
    label = key_precision(key)
    assert label is not None
    c = case(key, label, DEFAULTS[label].rtol / 2)
    fields = {"artifacts": {key: "g.onnx"}, "artifacts_sha256": {"g.onnx": H}, "validation": [c], "precision": None}
    checks = verdict(**(fields | sections))
    assert not passed(checks) and why in failed(checks)


# ---- export.build's exit status is this verdict's (build_error), not a second chain ----------------------


@pytest.mark.parametrize("changes,why", [({}, None), *RULES])
def test_the_build_fails_exactly_when_the_verdict_does(changes, why):
    report = Report(**(copy.deepcopy(GOOD) | changes))
    checks = judge(report, Thresholds.defaults(), own_flag=False)
    error = build_error(report, checks)
    assert (error is None) == passed(checks)
    if why is not None and changes != {"passed": False}:
        assert error is not None and why in failed(checks)


def test_skip_validation_explains_only_the_missing_validation():
    unvalidated = copy.deepcopy(GOOD) | {"validation": [], "validation_skipped": True}
    checks = judge(Report(**unvalidated), Thresholds.defaults(), own_flag=False)
    assert not passed(checks) and build_error(Report(**unvalidated), checks, validated=False) is None
    assert build_error(Report(**unvalidated), checks) is not None  # the same report, validation not skipped
    bad = unvalidated | {"quantization": {"format": "int8", "structure_problems": ["MatMul_3"]}}
    checks = judge(Report(**bad), Thresholds.defaults(), own_flag=False)
    error = build_error(Report(**bad), checks, validated=False)
    assert error is not None and "departs from its placement" in str(error)


@pytest.mark.parametrize(
    "changes,words",
    [
        ({"failure": "rotary rewrite: 3/4 sites"}, "rotary rewrite: 3/4 sites (artifacts kept in the output folder)"),
        ({"validation": [case("onnx", "fp32", 1e-3)]}, "outputs differ from PyTorch beyond thresholds:\n  #0 onnx"),
        ({"rewrite": REWRITE | {"rewritten": 3}}, "the build fails its verdict:\n  report rewrite: 3/4"),
    ],
)
def test_the_builds_error_names_the_first_failure(changes, words):
    report = Report(**(copy.deepcopy(GOOD) | changes))
    error = build_error(report, judge(report, Thresholds.defaults(), own_flag=False), where="where: layer 1")
    assert error is not None and str(error).startswith(words)


def test_a_case_about_a_graph_the_report_does_not_list_fails():
    checks = verdict(validation=[*GOOD["validation"], case("rope-onnx", "fp32", 0.0)])
    assert "'rope-onnx' is not an artifact" in failed(checks)


def test_relabelling_the_precision_buys_nothing():
    """An fp32 graph labelled bf16 would get bf16's thresholds (0.02 passes): the key decides, the label fails."""
    relabelled = case("onnx", "bf16", 0.02)
    checks = verdict(validation=[relabelled])
    assert not passed(checks) and "thresholds follow the graph" in failed(checks)
    honest = case("onnx", "fp32", 0.02)
    assert "scaled_error 0.02" in failed(verdict(validation=[honest]))  # judged as fp32: fails


@pytest.mark.parametrize(
    "stat,value,why",
    [
        ("scaled_error", 2e-5, "scaled_error 2e-05"),
        ("row_cosine", 0.9999, "row cosine 0.999900000"),
        ("cosine", 0.5, "cosine 0.500000"),
    ],
)
def test_each_statistic_can_fail_a_case(stat, value, why):
    c = case("onnx", "fp32", 5e-7, **{stat: value})
    assert why in failed(verdict(validation=[c]))


def test_row_cosine_is_required_for_hidden_states_only():
    c = case("onnx", "fp32", 5e-7)
    del c["outputs"]["last_hidden_state"]["row_cosine"]
    assert "statistic row_cosine is missing" in failed(verdict(validation=[c]))
    logits = case("onnx", "fp32", 5e-7)
    stats = logits["outputs"].pop("last_hidden_state")
    del stats["row_cosine"]
    logits["outputs"]["logits"] = stats
    assert passed(verdict(validation=[logits]))


def test_an_output_with_an_error_fails_whatever_its_statistics_say():
    c = case("onnx", "fp32", 0.0, error="graph has no output 'last_hidden_state'")
    assert "error: graph has no output" in failed(verdict(validation=[c]))


def test_own_flag_is_left_out_for_the_producer():
    fields = copy.deepcopy(GOOD) | {"passed": False}
    assert passed(judge(Report(**fields), Thresholds.defaults(), own_flag=False))


@pytest.mark.parametrize(
    "key,precision",
    [
        ("onnx", "fp32"),
        ("rope-plugin", "fp32"),
        ("rope-onnx", "fp32"),
        ("rope-plugin.fp16", "fp16"),
        ("onnx.bf16", "bf16"),
        ("rope-plugin.bf16-emulated", "bf16"),
        ("engine-fp16", "fp16"),
        ("engine-fp16.sidecar", None),
        ("bench-json", None),
        ("tensorrt-onnx", None),
        ("x.int3", None),
    ],
)
def test_key_precision(key, precision):
    assert key_precision(key) == precision


def test_the_build_the_gate_and_read_build_agree(built, copy, capsys):
    """One verdict: the real build passed it, the gate passes it, read_build serves it; a relabelled case
    fails all of them at once."""
    from engines.gate import main as gate

    assert read_build(built).passed and gate([str(built)]) == 0
    out, doctor = copy
    doctor(lambda r: r["validation"][0].update(precision="bf16"))
    assert gate([str(out)]) == 1
    with pytest.raises(VerificationError, match="thresholds follow the graph"):
        read_build(out)


def test_cases_without_outputs_prove_nothing_and_fail():
    """A case whose `outputs` is empty graded nothing: every such case fails, also when it is the only kind of
    case and no other check would fail (so a report of empty cases cannot pass on the report-level checks)."""
    empty = [dict(c, outputs={}) for c in copy.deepcopy(GOOD["validation"])]
    checks = verdict(validation=empty)
    assert not passed(checks)
    assert [c.case for c in checks if c.message == "case has no outputs"] == [c.case for c in checks if not c.passed]
    assert len([c for c in checks if not c.passed]) == len(empty)
    one = [*copy.deepcopy(GOOD["validation"]), dict(copy.deepcopy(GOOD["validation"][0]), outputs={})]
    assert failed(verdict(validation=one)) == "case has no outputs"


def test_the_gate_fails_a_real_report_whose_cases_have_no_outputs(copy, capsys):
    from engines.gate import main as gate

    out, doctor = copy
    doctor(lambda r: [c.update(outputs={}) for c in r["validation"]])
    assert gate([str(out)]) == 1
    assert "case has no outputs" in capsys.readouterr().out
