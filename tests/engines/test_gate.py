"""engines.gate: passes a good report, fails a doctored one, JUnit content, exit 2 on bad files."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET

import pytest

from engines.gate import main
from export.thresholds import DEFAULTS


def _case(graph, precision, max_abs, seq=16):
    t = DEFAULTS[precision]
    return {"graph": graph, "precision": precision, "batch": 2, "seq": seq, "choices": None, "padded_rows": 0,
            "outputs": {"last_hidden_state": {"max_abs": max_abs, "mean_abs": max_abs / 10, "max_rel": 1.0,
                                              "cosine": 0.9999999, "n_nan": 0, **t.to_dict(), "passed": True}},
            "passed": True}


GOOD = {"schema_version": 1, "command": [], "version": "0", "created": "2026-12-02T00:00:00+00:00",
        "model": {"layers": 2}, "artifacts": {}, "validation": [_case("onnx", "fp32", 5e-7),
                                                                 _case("fp16", "fp16", 2e-5),
                                                                 _case("bf16-emulated", "bf16", 2e-4, seq=29)],
        "engine": {"status": "skipped", "reason": "x"}, "passed": True}


def _write(tmp_path, obj, name="report.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(p)


def test_good_report_passes_and_junit(tmp_path, capsys):
    junit = tmp_path / "gate.xml"
    assert main([_write(tmp_path, GOOD), "--junit", str(junit)]) == 0
    assert "PASSED" in capsys.readouterr().out
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "0"  # the verdict + 3 cases
    assert len(suite.findall("testcase")) == 4 and not suite.findall("testcase/failure")


def test_doctored_report_fails_with_table_and_junit(tmp_path, capsys):
    bad = copy.deepcopy(GOOD)
    # stored flags still say passed: the gate re-checks the statistics, it does not trust the flags
    bad["validation"][1]["outputs"]["last_hidden_state"]["max_abs"] = 10 * DEFAULTS["fp16"].atol
    junit = tmp_path / "gate.xml"
    assert main([_write(tmp_path, bad), "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    assert "1 of 4 checks failed" in out and "fp16[fp16]" in out
    suite = ET.parse(junit).getroot().find("testsuite")
    fails = suite.findall("testcase/failure")
    assert suite.get("failures") == "1" and len(fails) == 1 and "max_abs 0.5" in fails[0].get("message")


def test_thresholds_file_tightens(tmp_path):
    toml = _write(tmp_path, '[bf16."*"."*"]\natol = 1e-4\n', "gates.toml")
    assert main([_write(tmp_path, GOOD), "--thresholds", toml]) == 1


def test_nan_fails(tmp_path):
    bad = copy.deepcopy(GOOD)
    bad["validation"][0]["outputs"]["last_hidden_state"]["n_nan"] = 3
    assert main([_write(tmp_path, bad)]) == 1


def test_zero_cases_fail(tmp_path, capsys):
    empty = {**GOOD, "validation": []}
    junit = tmp_path / "gate.xml"
    assert main([_write(tmp_path, empty), "--junit", str(junit)]) == 1
    assert "no validation cases" in capsys.readouterr().err
    assert ET.parse(junit).getroot().find("testsuite").get("failures") == "1"


@pytest.mark.parametrize("content", ["{not json", json.dumps([1, 2]), json.dumps({"validation": [{"graph": "x"}]})])
def test_bad_report_exits_2(tmp_path, capsys, content):
    assert main([_write(tmp_path, content)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_missing_and_bad_thresholds_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope.json")]) == 2
    assert main([_write(tmp_path, GOOD), "--thresholds", _write(tmp_path, "[fp16\n", "t.toml")]) == 2
    assert main([_write(tmp_path, GOOD), "--thresholds", _write(tmp_path, "[int8.x.y]\natol=1\n", "u.toml")]) == 2
    assert all(line.startswith("error: ") for line in capsys.readouterr().err.splitlines())
