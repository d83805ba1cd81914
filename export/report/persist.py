"""report.json and report.md on disk: written together, read back with the schema checked.

`read_report` is what every consumer (engines.gate, engines.triton, engines.serving) calls: a missing,
oversized, non-regular, non-UTF-8, too deeply nested or malformed file, or one of another schema version,
is a UsageError of one line (exit 2) naming the file and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

from export.errors import UsageError
from export.folder.atomic import write_atomic
from export.inputs.files import load_json
from export.report.markdown import render_markdown
from export.report.schema import REPORT_JSON, REPORT_MD, Report, ReportError

MAX_REPORT_BYTES = 64 << 20  # a demo report is ~30 kB; thousands of validation cases stay far below this


def read_report(path: str | Path) -> Report:
    """report.json (or the folder holding one) -> Report; UsageError (one line) when unusable."""
    p = Path(path)
    if p.is_dir():
        p = p / REPORT_JSON
    data = load_json(p, what="report", max_bytes=MAX_REPORT_BYTES)
    try:
        return Report.from_dict(data, source=str(p))
    except ReportError as e:
        raise UsageError(str(e)) from None


def report_text(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, default=str) + "\n"


def save_report(report: Report, out_dir: Path) -> None:
    """report.json, then report.md, each atomically (export.build writes both into its staging folder,
    which is moved into place as a whole, so the two never disagree in the user's folder)."""
    write_atomic(out_dir / REPORT_JSON, report_text(report))
    write_atomic(out_dir / REPORT_MD, render_markdown(report))
