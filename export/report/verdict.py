"""The one verdict on a build: did it pass, judged from its report.json (and, given its folder, its files).

`judge(report, thresholds, build_dir)` is the only place that decides; `export.build` (before it writes the
report), `engines.gate` (the CI gate) and `export.folder.artifacts.read_build` (what engines.triton publishes and
engines.serving serves) all call it. A report passes only when every Check passes:

- the producer's own word: not `--skip-validation`, no `failure`, no failed engine stage, and (for a finished
  report, `own_flag=True`) `passed: true`;
- at least one validation case: the verdict never passes vacuously;
- every case's graph is an artifact of the report with a recorded sha256: a report that describes no files, or
  a case about a graph it does not list, proves nothing;
- the case's thresholds come from its artifact key (`export.report.schema.key_precision`): "rope-plugin.fp16" is judged
  as fp16 whatever its `precision` field says, and a `precision` field that disagrees with the key fails;
- every output: an `error` fails whatever else it holds; each statistic a finite real in its range (the
  per-row cosine required for outputs that have rows, export.report.compare.ROW_OUTPUTS); then `Threshold.passes`
  on the stored statistics, so the flags a producer wrote decide nothing;
- with `build_dir`: every artifact (and every external-data file it reads) is beside the report, inside the
  folder, and has the recorded sha256.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.errors import UsageError, VerificationError
from export.folder.artifacts import verify_artifact
from export.report.compare import ROW_OUTPUTS
from export.report.persist import read_report
from export.report.schema import Report, key_precision
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


@dataclass(frozen=True)
class Check:
    case: str  # e.g. "#3 rope-plugin.fp16[fp16] b=3 s=61 pad=2", "report", "artifacts"
    output: str
    passed: bool
    message: str


def judge(
    report: Report, thresholds: Thresholds, build_dir: Path | None = None, *, own_flag: bool = True
) -> list[Check]:
    """Every check of the verdict; the report passes when all pass. own_flag=False leaves out the report's own
    `passed` field (export.build judges before it sets it); build_dir: also check the files beside it."""
    checks = producer_checks(report, own_flag) + case_checks(report, thresholds)
    if build_dir is not None:
        checks += artifact_checks(report, Path(build_dir))
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


def producer_checks(report: Report, own_flag: bool = True) -> list[Check]:
    """What the producer itself said: failed, not validated, an engine stage that failed, or not passed."""
    problems = []
    if report.validation_skipped:
        problems.append("the build was not validated (--skip-validation)")
    if report.failure:
        problems.append(f"the build failed: {report.failure}")
    if (report.engine or {}).get("status") == "failed":
        problems.append(f"the engine stage failed: {(report.engine or {}).get('reason')}")
    if own_flag and report.passed is not True and not problems:
        problems.append("the build marked itself not passed")
    return [Check("report", "verdict", not problems, "; ".join(problems) or "passed")]


def case_checks(report: Report, thresholds: Thresholds) -> list[Check]:
    """At least one case; each case's graph an artifact with a hash, judged at its key's precision."""
    if not report.validation:
        return [Check("validation", "cases", False, NO_CASES)]
    checks = []
    for i, case in enumerate(report.validation):
        name = case_name(i, case)
        problem = graph_problem(report, case)
        if problem:
            checks.append(Check(name, "graph", False, problem))
            continue
        if not case["outputs"]:
            checks.append(Check(name, "-", False, "case has no outputs"))
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
    return None


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
        return [Check("report", "artifacts", False, "the report lists no artifacts: it describes no files")]
    if not report.artifacts_sha256:
        return [
            Check(
                "report",
                "artifacts",
                False,
                "the report records no artifact hashes; rebuild it with python -m export.build",
            )
        ]
    missing = set(report.artifacts.values()) - set(report.artifacts_sha256)
    checks = [
        Check("artifacts", rel, False, "listed in artifacts but has no recorded sha256") for rel in sorted(missing)
    ]
    for rel in sorted(report.artifacts_sha256):
        try:
            verify_artifact(build_dir, rel, report)
            checks.append(Check("artifacts", rel, True, "sha256 matches"))
        except UsageError as e:
            checks.append(Check("artifacts", rel, False, str(e)))
    return checks


def _real_in(v: object, lo: float, hi: float) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= hi
