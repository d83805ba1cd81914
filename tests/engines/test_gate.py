"""engines.gate, the CI gate: the one verdict (export.report.verdict) on real reports, doctored ones and unusable files.

One real tiny build is made per module; each test doctors a copy of it. The CLI's own parts (the table,
JUnit, exit codes, thresholds files) are tested here; the verdict's rules one by one in
tests/export/report/test_verdict.py.
"""

from __future__ import annotations

import math
import os
import shutil
import xml.etree.ElementTree as ET

import pytest

from engines.gate import main as gate
from export.report.persist import read_report
from export.report.schema import REPORT_JSON, SCHEMA_VERSION, key_precision
from export.report.thresholds import DEFAULTS, Thresholds
from export.report.verdict import judge, passed
from tests.helpers import one_line
from tests.limits import HANG_S


def test_the_real_build_passes_the_gate(built, capsys):
    assert gate([str(built / REPORT_JSON)]) == 0
    assert "PASSED" in capsys.readouterr().out


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_the_release_builds_pass_the_gate(release_builds, precision, tmp_path, capsys):
    """What .ci/run gates: the tiny checkpoint built with the defaults, fp16 (rotary plugin, fp16 graph) and int8
    (calibrated Q/DQ graph with the plugin nodes, the fallback, the CPU twin), each validated against PyTorch and
    passing the gate with its precision's default thresholds, one JUnit testcase per check."""
    out = release_builds[precision]
    assert gate([str(out / REPORT_JSON), "--junit", str(tmp_path / "junit.xml")]) == 0
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert suite is not None and int(suite.get("tests")) >= 10 and suite.get("failures") == "0"
    r = read_report(out)
    graphs = {c["graph"] for c in r.validation}
    assert r.export["exporter"] == "dynamo" and r.export["max_len"] == 128 and len(r.profiles) == 2
    if precision == "fp16":
        assert graphs == {"onnx", "rope-plugin", "rope-plugin.fp16"}
    else:
        assert {"rope-plugin.int8", "onnx.int8-cpu"} <= graphs and r.quantization["fallback"]["mode"] == "auto"


# ---- impossible statistics fail the case, naming it ------------------------------------------------


@pytest.mark.parametrize(
    "key,value",
    [
        ("max_abs", math.nan),
        ("max_abs", math.inf),
        ("scaled_error", math.nan),
        ("max_abs", -1e-9),
        ("scaled_error", -0.5),
        ("cosine", 7.0),
        ("cosine", -1.5),
        ("cosine", math.nan),
        ("max_abs", True),
        ("n_nan", 0.5),
        ("n_nan", "many"),
        ("n_nan", -1),
        ("n_nan", False),
        ("mean_abs", -1.0),
        ("max_abs", None),
        ("row_cosine", 1.5),
        ("row_cosine", math.nan),
        ("row_cosine", "high"),
    ],
)
def test_impossible_statistic_fails_naming_it(copy, capsys, key, value):
    out, doctor = copy

    def change(r):
        r["validation"][0]["outputs"]["last_hidden_state"][key] = value

    assert gate([doctor(change)]) == 1
    text = capsys.readouterr().out
    assert key in text, text


@pytest.mark.parametrize("key", ["cosine", "scaled_error", "row_cosine"])
def test_missing_statistic_fails(copy, capsys, key):
    out, doctor = copy
    assert gate([doctor(lambda r: r["validation"][0]["outputs"]["last_hidden_state"].pop(key))]) == 1
    assert f"{key} is missing" in capsys.readouterr().out


def test_cosine_is_checked(copy):
    """A case within atol but below min_cosine fails: the gate does not ignore cosine."""
    out, doctor = copy
    assert gate([doctor(lambda r: r["validation"][0]["outputs"]["last_hidden_state"].update(cosine=0.5))]) == 1


def test_the_gate_judges_scaled_error_not_max_abs(copy):
    """A large max_abs with a small scaled_error passes (an output of large magnitude); a scaled_error over
    rtol fails, whatever max_abs says."""
    out, doctor = copy

    def large_outputs(r):
        r["validation"][0]["outputs"]["last_hidden_state"].update(max_abs=1.0, scaled_error=1e-6)

    assert gate([doctor(large_outputs)]) == 0

    def scaled_over(r):
        r["validation"][0]["outputs"]["last_hidden_state"].update(max_abs=1e-9, scaled_error=1e-3)

    assert gate([doctor(scaled_over)]) == 1


def test_row_cosine_is_checked(copy, capsys):
    out, doctor = copy
    assert gate([doctor(lambda r: r["validation"][0]["outputs"]["last_hidden_state"].update(row_cosine=0.99))]) == 1
    assert "row cosine 0.990000000" in capsys.readouterr().out


def test_the_gate_uses_its_own_thresholds_not_the_stored_ones(built, tmp_path):
    """A file with an absolute alternative (schema 1 style) re-judges the same statistics."""
    t = tmp_path / "abs.toml"
    t.write_text('[fp32."*"."*"]\natol = 1.0\nrtol = 0.0\n')
    assert gate([str(built / REPORT_JSON), "--thresholds", str(t)]) == 0
    t.write_text('[fp32."*"."*"]\natol = 0.0\nrtol = 0.0\n')
    assert gate([str(built / REPORT_JSON), "--thresholds", str(t)]) == 1


# ---- the producer's own verdict ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,why",
    [
        (lambda r: r.update(passed=False), "not passed"),
        (lambda r: r.update(failure="rotary rewrite: 3/4 sites"), "rotary rewrite"),
        (lambda r: r.update(engine={"status": "failed", "reason": "parser error"}), "engine stage failed"),
        (lambda r: r.update(validation_skipped=True), "not validated"),
    ],
)
def test_report_marked_failed_by_its_producer_fails(copy, capsys, change, why):
    out, doctor = copy
    assert gate([doctor(change)]) == 1
    assert why in capsys.readouterr().out


# ---- what a graph is, and what the stages recorded ----------------------------------------------------


@pytest.mark.parametrize("variant", ["fp16", "bf16", "bf16-emulated", "int8", "int8-cpu", "fp8"])
def test_an_fp32_build_relabelled_to_another_precision_fails(copy, capsys, variant):
    """Issue 27 failure 3: `onnx` / `rope-plugin` renamed `onnx.int8` / `rope-plugin.int8`, cases relabelled, the
    errors raised to what int8 allows, the sections made to agree: only the graph files can tell, and they do."""
    out, doctor = copy
    label = key_precision(f"onnx.{variant}")
    assert label is not None

    def relabel(r):
        r["artifacts"] = {
            (f"{k}.{variant}" if k in ("onnx", "rope-plugin") else k): v for k, v in r["artifacts"].items()
        }
        for c in r["validation"]:
            c["graph"], c["precision"] = f"{c['graph']}.{variant}", label
            c["outputs"]["last_hidden_state"]["scaled_error"] = DEFAULTS[label].rtol / 2  # e.g. 0.05 for int8
        r.update(precision={"precision": label}, quantization={"format": label, "structure_problems": []})

    path = doctor(relabel)
    assert passed(judge(read_report(path), Thresholds.defaults()))  # the report alone cannot tell
    assert gate([path]) == 1
    text = capsys.readouterr().out
    assert f"model.onnx is fp32, not {label}" in text and f"model.rope-plugin.onnx is fp32, not {label}" in text


@pytest.mark.parametrize(
    "change,why",
    [
        (lambda r: r["rewrite"].update(rewritten=r["rewrite"]["expected"] - 1), "rotary sites rewritten"),
        (lambda r: r["rewrite"].update(nodes=r["rewrite"]["expected_nodes"] + 1), "RoformerRotary nodes for"),
        (lambda r: r["rewrite"].pop("rewritten"), "records no site counts"),
        (lambda r: r.update(quantization={"format": "int8"}), "records no structure check"),
    ],
)
def test_what_a_stage_recorded_fails_the_gate_without_a_failure_line(copy, capsys, change, why):
    out, doctor = copy
    assert gate([doctor(change)]) == 1
    assert why in capsys.readouterr().out


# ---- artifacts beside the report -----------------------------------------------------------------------


def test_replaced_artifact_fails(copy, capsys):
    """The stale-report attack: another run's model.onnx beside this report."""
    out, doctor = copy
    data = bytearray((out / "model.onnx").read_bytes())
    data[-1] ^= 1
    (out / "model.onnx").write_bytes(bytes(data))
    assert gate([str(out / REPORT_JSON)]) == 1
    assert "model.onnx" in capsys.readouterr().out


def test_missing_artifact_fails(copy, capsys):
    out, _ = copy
    (out / "model.rope-plugin.onnx").unlink()
    assert gate([str(out / REPORT_JSON)]) == 1
    assert "missing" in capsys.readouterr().out


def test_symlink_out_of_the_folder_fails(copy, tmp_path, capsys):
    out, _ = copy
    outside = tmp_path / "outside.onnx"
    shutil.copy(out / "model.onnx", outside)
    (out / "model.onnx").unlink()
    (out / "model.onnx").symlink_to(outside)
    junit = tmp_path / "gate.xml"
    assert gate([str(out / REPORT_JSON), "--junit", str(junit)]) == 1
    assert "a symlink out of the build" in junit.read_text()


@pytest.mark.parametrize("path", ["../../etc/hostname", "/etc/hostname", "a/../../x.onnx"])
def test_artifact_path_leaving_the_folder_is_refused(copy, capsys, path):
    out, doctor = copy
    assert gate([doctor(lambda r: r["artifacts"].update(onnx=path))]) == 2
    assert "not a path inside the build folder" in one_line(capsys)


def test_unhashed_artifacts_fail(copy, capsys):
    out, doctor = copy
    assert gate([doctor(lambda r: r.pop("artifacts_sha256"))]) == 1
    assert "no artifact hashes" in capsys.readouterr().out


# ---- malformed reports: exit 2, one line ---------------------------------------------------------------


@pytest.mark.parametrize(
    "change,text",
    [
        (lambda r: r.pop("schema_version"), "schema version 0"),
        (lambda r: r.update(schema_version=SCHEMA_VERSION + 1), f"schema version {SCHEMA_VERSION + 1}"),
        (lambda r: r.update(schema_version="1"), "schema version '1'"),
        (lambda r: r.update(schema_version=1), "schema version 1, this tool reads version 3"),
        (lambda r: r.update(schema_version=2), "schema version 2, this tool reads version 3"),
        (lambda r: r["validation"][0].update(graph=["a"]), "'graph' must be str"),
        (lambda r: r["validation"][0].update(batch="2"), "'batch' must be an integer"),
        (lambda r: r.update(validation={"a": 1}), "'validation' must be list"),
        (lambda r: r.update(artifacts_sha256={"model.onnx": "zz"}), "not a sha256"),
    ],
)
def test_malformed_report_exits_2(copy, capsys, change, text):
    out, doctor = copy
    assert gate([doctor(change)]) == 2
    line = one_line(capsys)
    assert text in line and line.endswith("rebuild it with python -m export.build"), line


@pytest.mark.parametrize("content", [b"[" * 100000 + b"]" * 100000, b"\xff\xfe{}", b"[1, 2]", b"{", b""])
def test_unreadable_report_exits_2(tmp_path, capsys, content):
    p = tmp_path / REPORT_JSON
    p.write_bytes(content)
    assert gate([str(p)]) == 2
    assert one_line(capsys).startswith("error: ")


@pytest.mark.timeout(HANG_S)
@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "dir"])
def test_special_files_as_report_exit_2_at_once(tmp_path, capsys, special):
    path = {"fifo": tmp_path / "fifo", "/dev/zero": "/dev/zero", "dir": tmp_path}[special]
    if special == "fifo":
        os.mkfifo(path)
    assert gate([str(path)]) == 2  # the test's HANG_S timeout catches an open that blocks
    one_line(capsys)


def test_junit_directory_exits_2(built, tmp_path, capsys):
    assert gate([str(built / REPORT_JSON), "--junit", str(tmp_path)]) == 2
    assert "--junit" in one_line(capsys)


@pytest.mark.parametrize(
    "toml,key",
    [
        ("abc", "not valid TOML"),
        ('["*"."*"."*"]\natol = -1\n', "atol"),
        ('["*"."*"."*"]\nrtol = nan\n', "rtol"),
        ('["*"."*"."*"]\natol = inf\n', "atol"),
        ('["*"."*"."*"]\nmin_cosine = 2\n', "min_cosine"),
        ('["*"."*"."*"]\natol = true\n', "atol"),
        ('["*"."*"."*"]\natol = "1e-3"\n', "atol"),
        ('["*"."*"."*"]\nmin_row_cosine = 1.01\n', "min_row_cosine"),
    ],
)
def test_bad_thresholds_exit_2_naming_the_key(built, tmp_path, capsys, toml, key):
    t = tmp_path / "t.toml"
    t.write_text(toml)
    assert gate([str(built / REPORT_JSON), "--thresholds", str(t)]) == 2
    assert key in one_line(capsys)


def test_non_utf8_thresholds_exit_2(built, tmp_path, capsys):
    t = tmp_path / "t.toml"
    t.write_bytes(b"\xff\xfe atol")
    assert gate([str(built / REPORT_JSON), "--thresholds", str(t)]) == 2
    assert "UTF-8" in one_line(capsys)


def test_deeply_nested_thresholds_exit_2(built, tmp_path, capsys):
    t = tmp_path / "deep.toml"
    t.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    assert gate([str(built / REPORT_JSON), "--thresholds", str(t)]) == 2
    assert "deep" in one_line(capsys)


def test_atol_flag_overrides_every_table_of_the_file(tmp_path):
    from export.report.thresholds import DEFAULTS, Thresholds

    th = Thresholds.from_cli({"fp32": {"engine-fp32": {"*": {"atol": 0.0}}}}, "t.toml", atol=0.5, rtol=None)
    assert th.lookup("fp32", "engine-fp32", "last_hidden_state").atol == 0.5
    assert th.lookup("fp32", "onnx", "last_hidden_state").rtol == DEFAULTS["fp32"].rtol  # untouched: no flag


# ---- the CLI: table, JUnit -------------------------------------------------------------------------------


def test_good_report_passes_and_junit(built, tmp_path, capsys):
    junit = tmp_path / "gate.xml"
    assert gate([str(built / REPORT_JSON), "--junit", str(junit)]) == 0
    out = capsys.readouterr().out
    suite = ET.parse(junit).getroot().find("testsuite")
    n = int(suite.get("tests"))
    assert f"PASSED | {n} checks" in out and suite.get("failures") == "0" and not suite.findall("testcase/failure")
    assert len(suite.findall("testcase")) == n


def test_doctored_report_fails_with_table_and_junit(copy, tmp_path, capsys):
    out, doctor = copy
    junit = tmp_path / "gate.xml"

    def too_far(r):  # the stored flags still say passed: the gate re-checks the statistics, not the flags
        r["validation"][1]["outputs"]["last_hidden_state"].update(max_abs=0.5, scaled_error=0.5)

    assert gate([doctor(too_far), "--junit", str(junit)]) == 1
    text = capsys.readouterr().out
    assert "1 of" in text and "checks failed" in text and "scaled_error 0.5" in text
    fails = ET.parse(junit).getroot().find("testsuite").findall("testcase/failure")
    assert len(fails) == 1 and "scaled_error 0.5" in fails[0].get("message")


def test_thresholds_file_tightens(built, tmp_path):
    t = tmp_path / "gates.toml"
    t.write_text('[fp32."*"."*"]\natol = 0.0\nrtol = 0.0\n')
    assert gate([str(built / REPORT_JSON), "--thresholds", str(t)]) == 1


def test_zero_cases_fail(copy, tmp_path, capsys):
    out, doctor = copy
    junit = tmp_path / "gate.xml"
    assert gate([doctor(lambda r: r.update(validation=[])), "--junit", str(junit)]) == 1
    assert "no validation cases" in capsys.readouterr().out  # the verdict's own failed check, in the table
    assert ET.parse(junit).getroot().find("testsuite").get("failures") != "0"


def test_junit_path_that_cannot_be_written_exits_2(built, capsys):
    assert gate([str(built / REPORT_JSON), "--junit", "/proc/roformer-trt-gate.xml"]) == 2
    assert "--junit" in one_line(capsys)
