"""Accuracy gate: re-check every validation case of a report.json against the thresholds.

    python -m engines.gate out/report.json [--thresholds gates.toml] [--junit gate.xml]

In:  report.json (schema written by export.build; only "validation" is read), an optional thresholds
     TOML (export/thresholds.py format; default = DEFAULTS per precision).
Out: exit 0 when every case x output passes; 1 with a table of the failures; 2 for an unreadable or
     invalid report/thresholds file (one line on stderr). A report with no validation cases fails:
     the gate never passes vacuously. --junit writes one testcase per case x output (atomically).
The pass rule is Threshold.passes on the stored statistics (max_abs, max_rel, cosine, n_nan), so the
verdict does not depend on the "passed" flags written by whoever produced the report.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from export.errors import EXIT_OK, EXIT_USAGE, EXIT_VERIFICATION, UsageError
from export.thresholds import ThresholdError, Thresholds

STATS = ("max_abs", "max_rel", "cosine")


@dataclass(frozen=True)
class Check:
    case: str  # e.g. "engine-fp16[fp16] b=8 s=512 pad=4"
    output: str
    passed: bool
    message: str


def _case_name(i: int, c: dict) -> str:
    ch = f" c={c['choices']}" if c.get("choices") else ""
    return f"#{i} {c.get('graph')}[{c.get('precision')}] b={c.get('batch')} s={c.get('seq')}{ch} pad={c.get('padded_rows', 0)}"


def load_report(path: str | Path) -> dict:
    """report.json -> dict; UsageError (one line) when unreadable or not the report schema."""
    p = Path(path)
    try:
        report = json.loads(p.read_text())
    except FileNotFoundError:
        raise UsageError(f"report {p} does not exist; pass the report.json written by export.build") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"report {p} is not readable JSON ({e})") from None
    if not isinstance(report, dict) or not isinstance(report.get("validation", []), list):
        raise UsageError(f"report {p}: expected an object with a 'validation' list")
    for i, c in enumerate(report.get("validation", [])):
        if not isinstance(c, dict) or not isinstance(c.get("outputs"), dict) or "precision" not in c or "graph" not in c:
            raise UsageError(f"report {p}: validation[{i}] needs 'graph', 'precision' and an 'outputs' object")
    return report


def check_report(report: dict, thresholds: Thresholds) -> list[Check]:
    """One Check per case x output; a case with no outputs is one failed Check."""
    checks = []
    for i, case in enumerate(report.get("validation", [])):
        name = _case_name(i, case)
        if not case["outputs"]:
            checks.append(Check(name, "-", False, "case has no outputs"))
        for out, s in case["outputs"].items():
            try:
                t = thresholds.lookup(case["precision"], case["graph"], out)
            except ThresholdError as e:
                raise UsageError(f"validation[{i}]: {e}") from None
            if not isinstance(s, dict) or any(not isinstance(s.get(k), (int, float)) for k in STATS):
                err = s.get("error") if isinstance(s, dict) else None
                checks.append(Check(name, out, False, err or f"statistics {list(STATS)} missing"))
                continue
            n_nan = int(s.get("n_nan", 0) or 0)
            ok = t.passes(float(s["max_abs"]), float(s["max_rel"]), float(s["cosine"]), n_nan)
            msg = (f"max_abs {s['max_abs']:.3g} (atol {t.atol:.3g}) | max_rel {s['max_rel']:.3g} (rtol {t.rtol:.3g}) "
                   f"| cosine {s['cosine']:.6f} (min {t.min_cosine}) | nan {n_nan}")
            checks.append(Check(name, out, ok, msg))
    return checks


def write_junit(path: str | Path, checks: list[Check], suite: str = "accuracy-gate") -> None:
    from export.report import write_atomic

    failures = sum(not c.passed for c in checks)
    ts = ET.Element("testsuite", name=suite, tests=str(len(checks)), failures=str(failures), errors="0")
    if not checks:
        tc = ET.SubElement(ts, "testcase", classname=suite, name="validation cases")
        ET.SubElement(tc, "failure", message="report has no validation cases")
        ts.set("tests", "1")
        ts.set("failures", "1")
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
    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table
    except ImportError:  # rich is a dependency; plain text keeps the gate usable without it
        for c in bad:
            print(f"FAIL {c.case} {c.output}: {c.message}")
        return
    table = Table(title=f"accuracy gate: {len(bad)} of {len(checks)} checks failed")
    for col in ("case", "output", "why"):
        table.add_column(col)
    for c in bad:
        table.add_row(escape(c.case), escape(c.output), escape(c.message))  # "[fp16]" is not markup
    Console(width=200).print(table)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engines.gate", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Re-check every validation case of report.json against accuracy thresholds. "
                    "Exit 0: all pass; 1: some fail (or no cases); 2: unreadable report or thresholds.",
        epilog="example: python -m engines.gate demo/report.json --thresholds gates.toml --junit gate.xml")
    p.add_argument("report", help="report.json written by export.build")
    p.add_argument("--thresholds", default=None,
                   help="TOML thresholds ([precision.graph.output] tables, see export/thresholds.py); "
                        "default: export.thresholds.DEFAULTS per precision")
    p.add_argument("--junit", default=None, help="also write JUnit XML here (one testcase per case x output)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        thresholds = Thresholds.load(args.thresholds)
        report = load_report(args.report)
        checks = check_report(report, thresholds)
    except (UsageError, ThresholdError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.junit:
        write_junit(args.junit, checks)
    if not checks:
        print("FAILED | the report has no validation cases; the gate does not pass vacuously", file=sys.stderr)
        return EXIT_VERIFICATION
    if all(c.passed for c in checks):
        print(f"PASSED | {len(checks)} checks ({len(report['validation'])} cases)")
        return EXIT_OK
    _print_failures(checks)
    return EXIT_VERIFICATION


if __name__ == "__main__":
    sys.exit(main())
