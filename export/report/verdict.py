"""The one verdict on a build: did it pass, judged from its report.json (and, given its folder, its files).

`judge(report, thresholds, build_dir)` is the only place that decides; `export.build` (on its staging folder,
before it writes the report: its exit status is `build_error` of this verdict), `engines.gate` (the CI gate: its
exit status is `passed`) and `read_build` (what engines.triton publishes and engines.serving serves) all call it.
A report passes only when every Check passes:

- the producer's own word: not `--skip-validation`, no `failure`, no failed engine stage, and (for a finished
  report, `own_flag=True`) `passed: true`;
- what the stages recorded in their own sections, whatever `failure` says: a quantized graph's
  `structure_problems` (an empty list recorded), the rotary pass's coverage (every expected site rewritten, one
  plugin node per layer);
- at least one validation case: the verdict never passes vacuously;
- every case's graph is an artifact of the report with a recorded sha256: a report that describes no files, or
  a case about a graph it does not list, proves nothing;
- the case's thresholds come from its artifact key (`export.report.schema.key_precision`): a case `precision`
  that disagrees with the key fails, and so does a key whose precision the report's own sections do not record
  (`precision.precision` for fp16/bf16, `quantization.format` for int8/fp8, `engine.engines[].precision`);
- every output: an `error` fails whatever else it holds; each statistic a finite real in its range (the
  per-row cosine required for outputs that have rows, export.report.compare.ROW_OUTPUTS); then `Threshold.passes`
  on the stored statistics, so the flags a producer wrote decide nothing;
- with `build_dir`: every artifact (and every external-data file it reads) is beside the report, inside the
  folder, and has the recorded sha256; and every graph is what its key says (export.report.graph_precision reads
  the file: Q/DQ and their element types, float16 or bfloat16 tensors); an engine is judged by its sidecar, which
  must name the key's precision and the hash of the graph it was built from, and by that graph.
Each Check carries its `rule`; `--skip-validation` explains exactly the SKIPPED_VALIDATION rules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.errors import UsageError, VerificationError
from export.folder.artifacts import verify_artifact
from export.folder.digest import onnx_sha256
from export.inputs.files import MiB, load_json
from export.report.compare import ROW_OUTPUTS
from export.report.graph_precision import graph_precision
from export.report.persist import read_report
from export.report.schema import REBUILD, TENSORRT_ONNX_KEY, Report, key_precision
from export.report.thresholds import Threshold, ThresholdError, Thresholds

STATS = ("max_abs", "scaled_error", "cosine")  # required: the pass rule reads them
ROW_STATS = ("row_cosine",)  # also required for outputs with rows (export.report.compare.ROW_OUTPUTS)
RANGES = {
    "max_abs": (0.0, math.inf),
    "mean_abs": (0.0, math.inf),
    "scaled_error": (0.0, math.inf),
    "cosine": (-1.0, 1.0),
    "row_cosine": (-1.0, 1.0),
}
NO_CASES = "the report has no validation cases; the verdict never passes vacuously"
# The rules a Check belongs to
PRODUCER, UNVALIDATED, STAGE, CASES, GRAPH, OUTPUT, ARTIFACT, KIND = (
    "producer",
    "unvalidated",
    "stage",
    "cases",
    "graph",
    "output",
    "artifact",
    "kind",
)
SKIPPED_VALIDATION = frozenset({UNVALIDATED, CASES})  # what a build run with --skip-validation fails by design


@dataclass(frozen=True)
class Check:
    case: str  # e.g. "#3 rope-plugin.fp16[fp16] b=3 s=61 pad=2", "report", "artifacts", "graphs"
    output: str
    passed: bool
    message: str
    rule: str = OUTPUT


def judge(
    report: Report, thresholds: Thresholds, build_dir: Path | None = None, *, own_flag: bool = True
) -> list[Check]:
    """Every check of the verdict; the report passes when all pass. own_flag=False leaves out the report's own
    `passed` field (export.build judges before it sets it); build_dir: also check the files beside it."""
    checks = producer_checks(report, own_flag) + stage_checks(report) + case_checks(report, thresholds)
    if build_dir is not None:
        files = artifact_checks(report, Path(build_dir))
        verified = {c.output for c in files if c.passed and c.rule == ARTIFACT}
        checks += files + kind_checks(report, Path(build_dir), verified)
    return checks


def read_build(build: Path, thresholds: Thresholds | None = None) -> Report:
    """A build folder's report, only if the verdict passes it with `thresholds` (default: the defaults, as the
    gate): what engines.triton publishes and engines.serving serves. VerificationError (exit 1) naming the first
    failed checks otherwise; UsageError (exit 2) for a folder or report that cannot be read."""
    build = Path(build)
    if not build.is_dir():
        raise UsageError(f"{build} is not a directory; pass the folder written by python -m export.build")
    report = read_report(build)
    bad = failure_lines(judge(report, thresholds or Thresholds.defaults(), build))
    if bad:
        more = f" (and {len(bad) - 2} more)" if len(bad) > 2 else ""
        raise VerificationError(
            f"{build}/report.json does not pass the verdict: {'; '.join(bad[:2])}{more}; run "
            f"python -m engines.gate {build} for the table, fix the build before publishing or "
            "serving it"
        )
    return report


def passed(checks: list[Check]) -> bool:
    return bool(checks) and all(c.passed for c in checks)


def failure_lines(checks: list[Check]) -> list[str]:
    return [f"{c.case} {c.output}: {c.message}" for c in checks if not c.passed]


def build_error(
    report: Report, checks: list[Check], *, validated: bool = True, where: str | None = None
) -> VerificationError | None:
    """export.build's exit status, from the verdict alone: None (exit 0) when every check passes or, for a build
    run with --skip-validation (validated=False), when every failed check is one of SKIPPED_VALIDATION's; else the
    VerificationError (exit 1) to raise, worded from the first failures: the stage's own `failure` line, else the
    outputs beyond thresholds (`where`: the diagnosis's one line), else the failed checks."""
    failed = [c for c in checks if not c.passed and (validated or c.rule not in SKIPPED_VALIDATION)]
    if not failed:
        return None
    if report.failure:
        return VerificationError(f"{report.failure} (artifacts kept in the output folder)")
    outputs = failure_lines([c for c in failed if c.rule == OUTPUT])
    if outputs:
        tail = f"\n{where}" if where else ""
        return VerificationError("outputs differ from PyTorch beyond thresholds:\n  " + "\n  ".join(outputs) + tail)
    return VerificationError("the build fails its verdict:\n  " + "\n  ".join(failure_lines(failed)))


def producer_checks(report: Report, own_flag: bool = True) -> list[Check]:
    """What the producer itself said: failed, not validated, an engine stage that failed, or not passed."""
    problems = []
    if report.validation_skipped:
        problems.append((UNVALIDATED, "the build was not validated (--skip-validation)"))
    if report.failure:
        problems.append((PRODUCER, f"the build failed: {report.failure}"))
    if (report.engine or {}).get("status") == "failed":
        problems.append((PRODUCER, f"the engine stage failed: {(report.engine or {}).get('reason')}"))
    if own_flag and report.passed is not True and not problems:
        problems.append((PRODUCER, "the build marked itself not passed"))
    if not problems:
        return [Check("report", "verdict", True, "passed", PRODUCER)]
    return [Check("report", "verdict", False, why, rule) for rule, why in problems]


def stage_checks(report: Report) -> list[Check]:
    """What a stage recorded in its own section as a failure, whether or not the report's `failure` says so."""
    checks = []
    if report.quantization is not None:
        problems = report.quantization.get("structure_problems")
        if problems == []:
            checks.append(Check("report", "quantization", True, "the graph keeps its placement", STAGE))
        else:
            shown = problems[:3] if isinstance(problems, list) else problems
            why = "records no structure check" if problems is None else f"the graph departs from its placement: {shown}"
            checks.append(Check("report", "quantization", False, why, STAGE))
    if report.rewrite is not None:
        checks.append(_rewrite_check(report.rewrite))
    return checks


def _rewrite_check(rw: Mapping[str, Any]) -> Check:
    """The rotary pass's coverage as its section records it (export.passes.rotary.results.PassReport)."""
    expected, rewritten = _count(rw.get("expected")), _count(rw.get("rewritten"))
    if expected is None or rewritten is None:
        return Check("report", "rewrite", False, "the rewrite section records no site counts", STAGE)
    if rewritten < expected:
        return Check("report", "rewrite", False, f"{rewritten}/{expected} rotary sites rewritten", STAGE)
    if rw.get("mode") == "plugin" and rw.get("nodes") != rw.get("expected_nodes"):
        why = f"{rw.get('nodes')!r} RoformerRotary nodes for {rw.get('expected_nodes')!r} layers"
        return Check("report", "rewrite", False, why, STAGE)
    return Check("report", "rewrite", True, f"{rewritten}/{expected} rotary sites rewritten", STAGE)


def case_checks(report: Report, thresholds: Thresholds) -> list[Check]:
    """At least one case; each case's graph an artifact with a hash, judged at its key's precision."""
    if not report.validation:
        return [Check("validation", "cases", False, NO_CASES, CASES)]
    checks = []
    for i, case in enumerate(report.validation):
        name = case_name(i, case)
        problem = graph_problem(report, case)
        if problem:
            checks.append(Check(name, "graph", False, problem, GRAPH))
            continue
        if not case["outputs"]:
            checks.append(Check(name, "-", False, "case has no outputs", GRAPH))
        precision = key_precision(case["graph"])
        assert precision is not None  # graph_problem refused a key that names no graph
        for out, stats in case["outputs"].items():
            try:
                t = thresholds.lookup(precision, case["graph"], out)
            except ThresholdError as e:
                raise UsageError(f"validation[{i}]: {e}") from None
            checks.append(grade_output(name, out, stats, t))
    return checks


def graph_problem(report: Report, case: Mapping[str, Any]) -> str | None:
    """Why a case proves nothing about the files beside the report, or None."""
    key = case.get("graph")
    if key not in report.artifacts:
        listed = ", ".join(sorted(report.artifacts)) or "none"
        return f"graph {key!r} is not an artifact of the report (artifacts: {listed})"
    if report.artifacts[key] not in report.artifacts_sha256:
        return f"graph {key!r} ({report.artifacts[key]}) has no recorded sha256"
    precision = key_precision(key)
    if precision is None:
        return f"artifact {key!r} is not a graph the report can validate"
    if case.get("precision") != precision:
        return (
            f"case says precision {case.get('precision')!r} but its graph {key!r} is {precision}; the "
            "thresholds follow the graph, not the label"
        )
    return recorded_precision_problem(report, key, precision)


def recorded_precision_problem(report: Report, key: str, precision: str) -> str | None:
    """Why the report's own sections do not record `precision` for artifact `key`, or None."""
    if key.startswith("engine-"):
        engines = (report.engine or {}).get("engines") or []
        built = [e.get("precision") for e in engines if isinstance(e, dict)]
        section, ok = f"engine.engines records {built}", precision in built
    elif precision in ("fp16", "bf16"):
        recorded = (report.precision or {}).get("precision")
        section, ok = f"precision.precision is {recorded!r}", recorded == precision
    elif precision in ("int8", "fp8"):
        recorded = (report.quantization or {}).get("format")
        section, ok = f"quantization.format is {recorded!r}", recorded == precision
    else:
        return None  # fp32: every build has fp32 graphs
    if ok:
        return None
    return f"graph {key!r} is {precision} by its key, but the report's {section}; the thresholds follow what was built"


def case_name(i: int, c: Mapping[str, Any]) -> str:
    ch = f" c={c['choices']}" if c.get("choices") else ""
    return (
        f"#{i} {c.get('graph')}[{c.get('precision')}] b={c.get('batch')} s={c.get('seq')}{ch} "
        f"pad={c.get('padded_rows', 0)}"
    )


def grade_output(name: str, out: str, s: object, t: Threshold) -> Check:
    """One output's statistics, each checked for type and range before the thresholds are applied."""
    if not isinstance(s, dict):
        return Check(name, out, False, "statistics are not an object")
    if "error" in s:
        return Check(name, out, False, f"error: {s['error']}")
    for key in STATS + (ROW_STATS if out in ROW_OUTPUTS else ()):
        if key not in s:
            return Check(name, out, False, f"statistic {key} is missing")
    for key, (lo, hi) in RANGES.items():
        if key in s and not _real_in(s[key], lo, hi):
            return Check(name, out, False, f"statistic {key} = {s[key]!r} is not a finite number in [{lo}, {hi}]")
    n_nan = s.get("n_nan", 0)
    if isinstance(n_nan, bool) or not isinstance(n_nan, int) or n_nan < 0:
        return Check(name, out, False, f"statistic n_nan = {n_nan!r} is not a non-negative integer")
    row = float(s["row_cosine"]) if out in ROW_OUTPUTS else None
    ok = t.passes(float(s["max_abs"]), float(s["scaled_error"]), float(s["cosine"]), n_nan, row)
    return Check(name, out, ok, describe(s, t, n_nan, row))


def describe(s: dict, t: Threshold, n_nan: int, row: float | None) -> str:
    rows = "" if row is None else f" | row cosine {row:.9f} (min {t.min_row_cosine:.11g})"
    return (
        f"scaled_error {s['scaled_error']:.3g} (rtol {t.rtol:.3g}) | max_abs {s['max_abs']:.3g} (atol "
        f"{t.atol:.3g}) | cosine {s['cosine']:.6f} (min {t.min_cosine}){rows} | nan {n_nan}"
    )


def artifact_checks(report: Report, build_dir: Path) -> list[Check]:
    """Every recorded artifact is beside the report, inside the folder, with the recorded sha256."""
    if not report.artifacts:
        return [Check("report", "artifacts", False, "the report lists no artifacts: it describes no files", ARTIFACT)]
    if not report.artifacts_sha256:
        return [
            Check(
                "report",
                "artifacts",
                False,
                "the report records no artifact hashes; rebuild it with python -m export.build",
                ARTIFACT,
            )
        ]
    missing = set(report.artifacts.values()) - set(report.artifacts_sha256)
    checks = [
        Check("artifacts", rel, False, "listed in artifacts but has no recorded sha256", ARTIFACT)
        for rel in sorted(missing)
    ]
    for rel in sorted(report.artifacts_sha256):
        try:
            verify_artifact(build_dir, rel, report)
            checks.append(Check("artifacts", rel, True, "sha256 matches", ARTIFACT))
        except UsageError as e:
            checks.append(Check("artifacts", rel, False, str(e), ARTIFACT))
    return checks


def kind_checks(report: Report, build_dir: Path, verified: set[str]) -> list[Check]:
    """Every graph artifact (and engine) is what its key says, read from the files themselves; `verified`: the
    paths whose sha256 matched (the others fail already). A file that is not a usable graph or sidecar is
    UsageError (exit 2), as for the report itself."""
    checks = []
    for key, rel in sorted(report.artifacts.items()):
        precision = key_precision(key)
        if precision is None or rel not in verified:
            continue
        try:
            what = engine_precision(build_dir, report, key, verified) if key.startswith("engine-") else None
        except ValueError as e:
            checks.append(Check("graphs", key, False, f"{rel} cannot be judged: {e}", KIND))
            continue
        what = what or _read_precision(build_dir, rel)
        why = f"{rel} is {what}"
        if what != precision:
            why += f", not {precision} as its key {key!r} says; thresholds follow what it is"
        checks.append(Check("graphs", key, what == precision, why, KIND))
    return checks


def engine_precision(build_dir: Path, report: Report, key: str, verified: set[str]) -> str:
    """What an engine computes in: the precision of the graph it was built from, which its sidecar must name,
    with that graph's hash. A plan cannot be read without TensorRT; its sidecar and graph can. ValueError: why the
    engine cannot be judged by them."""
    sidecar_rel, graph_rel = report.artifacts.get(key + ".sidecar"), report.artifacts.get(TENSORRT_ONNX_KEY)
    if sidecar_rel is None or graph_rel is None:
        raise ValueError(f"the report lists no {key}.sidecar or {TENSORRT_ONNX_KEY} artifact to judge it by")
    if not {sidecar_rel, graph_rel} <= verified:
        raise ValueError(f"{sidecar_rel} or {graph_rel}, which it is judged by, failed its sha256 check")
    sidecar = load_json(build_dir / sidecar_rel, what="engine sidecar", max_bytes=MiB)
    built = _read_precision(build_dir, graph_rel)
    if not isinstance(sidecar, dict) or sidecar.get("onnx_sha256") != onnx_sha256(build_dir / graph_rel):
        raise ValueError(f"its sidecar {sidecar_rel} does not record the sha256 of {graph_rel}, its graph")
    if sidecar.get("precision") != built:
        raise ValueError(f"its sidecar says {sidecar.get('precision')!r}, but {graph_rel}, its graph, is {built}")
    return built


def _read_precision(build_dir: Path, rel: str) -> str:
    try:
        return graph_precision(build_dir / rel)
    except ValueError as e:
        raise UsageError(f"{build_dir}/{rel} is not a usable ONNX graph ({e}); {REBUILD}") from None


def _count(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _real_in(v: object, lo: float, hi: float) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= hi
