"""The diagnosis stage of export.build: when validation fails, where does the graph leave PyTorch?

In: the validation cases, the graphs validated (name -> (graph, precision)), the checkpoint (its fp32 model is
the reference), the thresholds, the staging folder. Out: report.json `diagnosis` (export.report.schema.DiagnosisSection)
and `diagnosis/diagnosis.{json,md,png}` in the build, for ONE failing case: the smallest failing shape (fewest
tokens) of the first graph that failed, so the stage stays short. It runs export.diagnose.diagnose_model with a
time cap of TIME_CAP_S: no layer group starts after it (the demo model at S = 61: 7 s in one group after the
first; at S = 2048: 70 s in 3); the section then says it is incomplete and where it stopped. The build's exit
code stays 1: the diagnosis explains a failure, it never changes the verdict. A diagnosis that fails itself is
recorded with its reason and the build goes on to report the validation failure.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from export.diagnose import diagnose_model
from export.diagnose.render import render_markdown, render_png
from export.folder.atomic import write_atomic
from export.folder.layout import DIAGNOSIS_FILES, diagnosis_file
from export.progress import status
from export.report.markdown import divergence_sentence
from export.report.schema import ONNX_KEY, DiagnosisSection, ValidationCase, diagnosis_key
from export.report.thresholds import Thresholds
from export.stages.result import StageResult
from export.validate import Shape, make_inputs

TIME_CAP_S = 120.0
log = logging.getLogger(__name__)


def run_diagnosis_stage(
    cases: list[ValidationCase], graphs: dict, ckpt, thresholds: Thresholds, work: Path
) -> StageResult[DiagnosisSection] | None:
    failing = [c for c in cases if not c["passed"] and c["graph"] in graphs]
    if not failing:
        return None
    first_graph = failing[0]["graph"]
    case = min((c for c in failing if c["graph"] == first_graph), key=lambda c: (c["batch"] * c["seq"], c["seq"]))
    graph, precision = graphs[first_graph]
    shape = Shape(case["batch"], case["seq"], case.get("padded_rows", 0), case.get("choices"))
    section: DiagnosisSection = {"graph": first_graph, "reference": "pytorch", "batch": shape.batch, "seq": shape.seq}
    names = _name_reference(cases, graphs, first_graph)
    feeds = make_inputs(shape, ckpt.facts.vocab_size, ckpt.facts.type_vocab_size)  # the case's own inputs
    t0 = time.monotonic()
    try:
        with status(f"diagnosing {first_graph} at {shape.label()}"):
            d = diagnose_model(
                ckpt.model, ckpt.task, graph, feeds, thresholds, precision, first_graph, names, deadline=t0 + TIME_CAP_S
            )
    except Exception as e:  # surfaces in report.json / report.md; the validation failure is what the build reports
        log.debug("diagnosis failed", exc_info=True)
        section |= {
            "complete": False,
            "reason": f"the diagnosis failed: {type(e).__name__}: {e}",
            "first_divergence": None,
            "seconds": round(time.monotonic() - t0, 2),
        }
        return StageResult(section)
    out = d.to_json()
    artifacts = _write(out, work)
    section |= {
        "first_divergence": out["first_divergence"],
        "complete": out["complete"],
        "seconds": out["seconds"],
        "layers": [
            {k: p[k] for k in ("stage", "layer", "name", "scaled_error", "row_cosine", "passed") if k in p}
            for p in out["points"]
        ],
        "files": {kind: diagnosis_file(kind) for kind in DIAGNOSIS_FILES},
    }
    if out["reason"]:
        section["reason"] = out["reason"]
    return StageResult(section, artifacts=artifacts)


def _name_reference(cases: list[ValidationCase], graphs: dict, graph: str):
    """The plain export, when it is not the graph diagnosed and passed every case: its names reach the node."""
    plain = [c for c in cases if c["graph"] == ONNX_KEY]
    if graph == ONNX_KEY or ONNX_KEY not in graphs or not plain or not all(c["passed"] for c in plain):
        return None
    return graphs[ONNX_KEY][0]


def _write(d: dict, work: Path) -> dict[str, str]:
    data: dict[str, str | bytes] = {
        "json": json.dumps(d, indent=2) + "\n",
        "md": render_markdown(d),
        "png": render_png(d),
    }
    for kind, content in data.items():
        write_atomic(work / diagnosis_file(kind), content)
    return {diagnosis_key(kind): diagnosis_file(kind) for kind in data}


def summary(section: DiagnosisSection | None) -> str | None:
    """The one line report.failure and the build's error carry."""
    if not section:
        return None
    if section.get("reason") and section.get("first_divergence") is None:
        return f"diagnosis: {section['reason']}"
    return f"diagnosis ({section['graph']}, B={section['batch']} S={section['seq']}): " + divergence_sentence(
        section.get("first_divergence")
    )
