"""Accuracy gate: re-check every validation case of a report.json against the thresholds.

    python -m engines.gate out/report.json [--thresholds gates.toml] [--junit gate.xml]

In:  report.json (schema export/report.py), an optional thresholds TOML (export/thresholds.py format;
     default = DEFAULTS per precision).
Out: exit 0 when every check passes; 1 with a table of the failures; 2 for an unusable report or
     thresholds file (malformed, another schema version, not a regular file: one line on stderr).
Checks, each one line in the table and one JUnit testcase:
- the report's own verdict: a report its producer marked failed (`passed: false`, `failure`, an engine
  stage that failed) or not validated (`validation_skipped`) fails;
- every artifact beside the report is present and has the sha256 the report recorded (a folder where
  another run's files replaced these fails);
- every case x output: each statistic a finite real in its range (errors >= 0, cosine in [-1, 1],
  `n_nan` a non-negative integer), then Threshold.passes on the stored statistics, so the verdict does
  not depend on the "passed" flags written by whoever produced the report.
A report with no validation cases fails: the gate never passes vacuously.
"""

from __future__ import annotations

import math
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engines.artifacts import verify_artifact
from export import cli
from export.atomic import write_atomic
from export.cli import Parser
from export.errors import EXIT_OK, EXIT_VERIFICATION, UsageError
from export.files import load_toml
from export.report import Report
from export.report_io import read_report
from export.thresholds import ThresholdError, Thresholds

STATS = ("max_abs", "max_rel", "cosine")
NO_CASES = "the report has no validation cases; the gate does not pass vacuously"
RANGES = {"max_abs": (0.0, math.inf), "mean_abs": (0.0, math.inf), "max_rel": (0.0, math.inf), "cosine": (-1.0, 1.0)}


@dataclass(frozen=True)
class Check:
    case: str  # e.g. "engine-fp16[fp16] b=8 s=512 pad=4"
    output: str
    passed: bool
    message: str


def _case_name(i: int, c: dict) -> str:
    ch = f" c={c['choices']}" if c.get("choices") else ""
    return f"#{i} {c.get('graph')}[{c.get('precision')}] b={c.get('batch')} s={c.get('seq')}{ch} pad={c.get('padded_rows', 0)}"


def check_report(report: Report, thresholds: Thresholds, build_dir: Path | None = None) -> list[Check]:
    """The report's verdict, its artifacts (when build_dir is given) and one Check per case x output."""
    checks = verdict_checks(report)
    if not report.validation:
        checks.append(Check("validation", "cases", False, NO_CASES))
    if build_dir is not None:
        checks += artifact_checks(report, build_dir)
    for i, case in enumerate(report.validation):
        name = _case_name(i, case)
        if not case["outputs"]:
            checks.append(Check(name, "-", False, "case has no outputs"))
        for out, s in case["outputs"].items():
            try:
                t = thresholds.lookup(case["precision"], case["graph"], out)
            except ThresholdError as e:
                raise UsageError(f"validation[{i}]: {e}") from None
            checks.append(grade_output(name, out, s, t))
    return checks


def verdict_checks(report: Report) -> list[Check]:
    """What the producer itself said: failed, not validated, or an engine stage that failed."""
    problems = []
    if report.validation_skipped:
        problems.append("the build was not validated (--skip-validation)")
    if report.failure:
        problems.append(f"the build failed: {report.failure}")
    if (report.engine or {}).get("status") == "failed":
        problems.append(f"the engine stage failed: {(report.engine or {}).get('reason')}")
    if not report.passed and not problems:
        problems.append("the build marked itself not passed")
    return [Check("report", "verdict", not problems, "; ".join(problems) or "passed")]


def artifact_checks(report: Report, build_dir: Path) -> list[Check]:
    """Every recorded artifact is beside the report, inside the folder, with the recorded sha256."""
    if report.artifacts and not report.artifacts_sha256:
        return [Check("report", "artifacts", False, "the report records no artifact hashes; rebuild it with "
                      "python -m export.build")]
    missing = set(report.artifacts.values()) - set(report.artifacts_sha256)
    checks = [Check("artifacts", rel, False, "listed in artifacts but has no recorded sha256") for rel in sorted(missing)]
    for rel in sorted(report.artifacts_sha256):
        try:
            verify_artifact(build_dir, rel, report)
            checks.append(Check("artifacts", rel, True, "sha256 matches"))
        except UsageError as e:
            checks.append(Check("artifacts", rel, False, str(e)))
    return checks


def grade_output(name: str, out: str, s: object, t) -> Check:
    """One output's statistics, each checked for type and range before the thresholds are applied."""
    if not isinstance(s, dict):
        return Check(name, out, False, "statistics are not an object")
    if "error" in s and not all(k in s for k in STATS):
        return Check(name, out, False, str(s["error"]))
    for key in STATS + ("mean_abs",):
        if key not in s and key in STATS:
            return Check(name, out, False, f"statistic {key} is missing")
        if key in s and not _real_in(s[key], *RANGES[key]):
            lo, hi = RANGES[key]
            return Check(name, out, False, f"statistic {key} = {s[key]!r} is not a finite number in [{lo}, {hi}]")
    n_nan = s.get("n_nan", 0)
    if isinstance(n_nan, bool) or not isinstance(n_nan, int) or n_nan < 0:
        return Check(name, out, False, f"statistic n_nan = {n_nan!r} is not a non-negative integer")
    ok = t.passes(float(s["max_abs"]), float(s["max_rel"]), float(s["cosine"]), n_nan)
    msg = (f"max_abs {s['max_abs']:.3g} (atol {t.atol:.3g}) | max_rel {s['max_rel']:.3g} (rtol {t.rtol:.3g}) "
           f"| cosine {s['cosine']:.6f} (min {t.min_cosine}) | nan {n_nan}")
    return Check(name, out, ok, msg)


def _real_in(v: object, lo: float, hi: float) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= hi


def write_junit(path: str | Path, checks: list[Check], suite: str = "accuracy-gate") -> None:
    failures = sum(not c.passed for c in checks)
    ts = ET.Element("testsuite", name=suite, tests=str(len(checks)), failures=str(failures), errors="0")
    for c in checks:
        tc = ET.SubElement(ts, "testcase", classname=c.case, name=c.output)
        if not c.passed:
            ET.SubElement(tc, "failure", message=c.message).text = c.message
        else:
            ET.SubElement(tc, "system-out").text = c.message
    root = ET.Element("testsuites")
    root.append(ts)
    write_atomic(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _print_failures(checks: list[Check]) -> None:
    bad = [c for c in checks if not c.passed]
    table = Table(title=f"accuracy gate: {len(bad)} of {len(checks)} checks failed")
    for col in ("case", "output", "why"):
        table.add_column(col)
    for c in bad:
        table.add_row(escape(c.case), escape(c.output), escape(c.message))  # "[fp16]" is not markup
    Console(width=200).print(table)


def build_parser() -> Parser:
    p = Parser(prog="python -m engines.gate",
               description="Re-check report.json: its verdict, the sha256 of every artifact beside it, and every "
                           "validation case against accuracy thresholds. Exit 0: all pass; 1: some fail (or no "
                           "cases); 2: unusable report or thresholds.",
               epilog="example: python -m engines.gate demo/report.json --thresholds gates.toml --junit gate.xml")
    p.add_argument("report", help="report.json written by export.build (or its folder)")
    p.add_argument("--thresholds", default=None,
                   help="TOML thresholds ([precision.graph.output] tables, see export/thresholds.py); "
                        "default: export.thresholds.DEFAULTS per precision")
    p.add_argument("--junit", default=None, help="also write JUnit XML here (one testcase per check)")
    return p


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), _main, argv, usage_errors=(ThresholdError,))


def _main(args) -> int:
    if args.junit and Path(args.junit).is_dir():
        raise UsageError(f"--junit {args.junit} is a folder; pass a file path for the JUnit XML")
    data = load_toml(args.thresholds, what="thresholds file") if args.thresholds else None
    thresholds = Thresholds.from_data(data, str(args.thresholds))
    path = Path(args.report)
    report = read_report(path)
    checks = check_report(report, thresholds, path if path.is_dir() else path.parent)
    if args.junit:
        write_junit(args.junit, checks)
    if not report.validation:
        print(f"FAILED | {NO_CASES}", file=sys.stderr)
        return EXIT_VERIFICATION
    if all(c.passed for c in checks):
        print(f"PASSED | {len(checks)} checks ({len(report.validation)} cases)")
        return EXIT_OK
    _print_failures(checks)
    return EXIT_VERIFICATION


if __name__ == "__main__":
    sys.exit(main())
