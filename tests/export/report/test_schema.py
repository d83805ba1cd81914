"""The typed report: one schema with a version, sections round-trip, report.md renders every section for
people, and no Python function in the product grows past 80 lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.report.markdown import render_markdown
from export.report.schema import SCHEMA_VERSION, Report, ReportError, bench_key, engine_key, precision_key, rope_key

ROOT = Path(__file__).resolve().parents[3]


def full_report() -> Report:
    r = Report(command=["--model", "x"], version="0.1.0", created="2026-12-02T00:00:00+00:00", passed=True)
    r.model = {"layers": 2, "hidden": 32}
    r.plugin = {"status": "built", "path": "/p/libroformer_trt_plugin.so", "sha256": "ab" * 32}
    r.engine = {
        "status": "built",
        "engines": [
            {
                "plan": "model.fp16.plan",
                "precision": "fp16",
                "onnx": "model.rope-plugin.fp16.onnx",
                "reused": False,
                "build_seconds": 12.5,
                "plugin_layers": 2,
                "rebuild_reasons": [],
            }
        ],
    }
    r.profiles = [{"index": 0, "batch": [1, 8, 32], "sequence": [1, 128, 128]}]
    r.timings = {"export": 1.25}
    r.artifacts = {"onnx": "model.onnx"}
    r.artifacts_sha256 = {"model.onnx": "cd" * 32}
    return r


def test_round_trip_keeps_every_section():
    r = full_report()
    assert Report.from_dict(r.to_dict()) == r
    assert r.to_dict()["schema_version"] == SCHEMA_VERSION


def test_every_section_renders_as_tables_not_json():
    md = render_markdown(full_report())
    for heading in ("## Model", "## Plugin", "## Engine", "## Optimization profiles", "## Files", "## Time per stage"):
        assert heading in md
    assert "| model.fp16.plan | fp16 |" in md and "| `/p/libroformer_trt_plugin.so` |" in md
    assert "{" not in md  # no JSON dumps anywhere


def test_unavailable_plugin_and_skipped_engine_read_as_sentences():
    r = full_report()
    r.plugin = {"status": "unavailable", "reason": "plugin library not built; run python -m plugins.build"}
    r.engine = {"status": "skipped", "reason": "TensorRT is not installed"}
    md = render_markdown(r)
    assert "Not available: plugin library not built" in md and "**skipped**: TensorRT is not installed" in md


@pytest.mark.parametrize("data", [[], "x", {"schema_version": 1}, {"schema_version": True, "command": []}])
def test_malformed_reports_are_refused(data):
    with pytest.raises(ReportError, match="rebuild it with python -m export.build"):
        Report.from_dict(data)


def test_artifact_keys_have_one_spelling():
    assert [rope_key("plugin"), precision_key("rope-plugin", "fp16"), engine_key("bf16"), bench_key("plot")] == [
        "rope-plugin",
        "rope-plugin.fp16",
        "engine-bf16",
        "bench-plot",
    ]


def test_serving_refuses_a_report_of_another_schema(tmp_path):
    import json

    from engines.serving.ort_model import OrtEncoder
    from export.errors import UsageError

    (tmp_path / "report.json").write_text(json.dumps({"passed": True, "artifacts": {"onnx": "model.onnx"}}))
    with pytest.raises(UsageError, match="schema version 0.*rebuild it with python -m export.build"):
        OrtEncoder.from_build(tmp_path)
