"""Where a script writes: a folder under build/ by default; the committed results only when a person asks.

Every script that measures something takes `--out DIR` (default `build/scripts/<script>/`) and, where README
quotes its figures from a committed results folder, `--update-results`, which writes there instead
(`scripts/results/<folder>/`, in the repository whatever the working directory). Scratch files (checkpoints,
builds, graphs) go to `--work` (default `build/scripts/<script>/work/`), never beside the results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "scripts" / "results"
WORK = Path("build") / "scripts"


def add_output_flags(p: argparse.ArgumentParser, script: str, results: str | None, work: bool = False) -> None:
    """--out (and --update-results when `results` names a folder of scripts/results/; --work when `work`)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--out", type=Path, default=WORK / script, help="folder for the results (JSON, Markdown, plot)")
    if results is not None:
        g.add_argument(
            "--update-results",
            dest="out",
            action="store_const",
            const=RESULTS / results,
            help=f"write the results into scripts/results/{results}/ instead: the committed figures README quotes",
        )
    if work:
        p.add_argument(
            "--work", type=Path, default=WORK / script / "work", help="scratch folder: checkpoints, builds, graphs"
        )
