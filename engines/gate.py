"""Accuracy gate: python -m engines.gate out/report.json [--thresholds gates.toml] [--junit gate.xml]

In:  report.json (schema export/report/schema.py), an optional thresholds TOML (export/report/thresholds.py format;
     default = DEFAULTS per precision).
Out: exit 0 when the verdict passes; 1 with a table of the failed checks; 2 for an unusable report or
     thresholds file (malformed, another schema version, not a regular file: one line on stderr).
The checks are the one verdict of export/report/verdict.py (the same function export.build, engines.triton and
engines.serving use), with the artifacts beside the report hashed and every graph read for what it is; the exit
status is that verdict's, nothing is decided here. Each check is one line of the table and one JUnit testcase.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from export.cli import entry as cli
from export.cli.entry import Parser
from export.cli.flags import add_thresholds
from export.errors import EXIT_OK, EXIT_VERIFICATION, UsageError
from export.folder.atomic import write_atomic
from export.inputs.files import load_toml
from export.report.markdown import divergence_sentence
from export.report.persist import read_report
from export.report.schema import Report
from export.report.thresholds import ThresholdError, Thresholds
from export.report.verdict import Check, judge, passed


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


def _print_failures(checks: list[Check], report: Report, build_dir: Path) -> None:
    bad = [c for c in checks if not c.passed]
    table = Table(title=f"accuracy gate: {len(bad)} of {len(checks)} checks failed")
    for col in ("case", "output", "why"):
        table.add_column(col)
    for c in bad:
        table.add_row(escape(c.case), escape(c.output), escape(c.message))  # "[fp16]" is not markup
    d = report.diagnosis
    if d:  # where the build's own diagnosis found the first divergence
        files = d.get("files") or {}
        table.caption = (
            f"where: {d.get('graph')} B={d.get('batch')} S={d.get('seq')}: "
            f"{divergence_sentence(d.get('first_divergence'))}"
            + (f" Layer by layer: {build_dir / files['md']}." if files.get("md") else "")
        )
    elif any(c.case.startswith("#") for c in bad):
        table.caption = f"where: python -m export.diagnose --build {build_dir} names the first divergent layer and node"
    Console(width=200, color_system=None).print(table)


def build_parser() -> Parser:
    p = Parser(
        prog="python -m engines.gate",
        description="Re-check report.json: its verdict, the sha256 of every artifact beside it, and every "
        "validation case against accuracy thresholds. Exit 0: all pass; 1: some fail (or no "
        "cases); 2: unusable report or thresholds.",
        epilog="example: python -m engines.gate build/ckpt/report.json --thresholds gates.toml --junit gate.xml",
    )
    p.add_argument("report", help="report.json written by export.build (or its folder)")
    add_thresholds(p)
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
    checks = judge(report, thresholds, path if path.is_dir() else path.parent)
    if args.junit:
        try:
            write_junit(args.junit, checks)
        except OSError as e:
            raise UsageError(
                f"--junit {args.junit} cannot be written ({e.strerror}); pass a file path in a folder you can write to"
            ) from None
    if passed(checks):  # the verdict alone decides (no cases: its own failed check)
        print(f"PASSED | {len(checks)} checks ({len(report.validation)} cases)")
        return EXIT_OK
    _print_failures(checks, report, path if path.is_dir() else path.parent)
    return EXIT_VERIFICATION


if __name__ == "__main__":
    sys.exit(main())
