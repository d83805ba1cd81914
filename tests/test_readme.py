"""README.md is the front door: short, and its tables say what the code says. The exit codes are export/errors.py's,
the code layout is LAYERS of tests/test_import_direction.py, every folder README is linked, and the four parts that
have never run are marked so. (scripts/check_readme.py runs README's commands; tests/scripts/test_check_readme.py.)"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from export import errors
from tests.test_import_direction import LAYERS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 250
NEVER_RUN = ("TensorRT engine build", "CUDA kernel on a GPU", "Triton TensorRT backend", "C++ example")


def section(title: str) -> list[str]:
    """The lines of README's `## title` section."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"## {title}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start + 1 : end]


def table_rows(lines: list[str]) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    return rows[2:]  # past the header and its rule


def expand(cell: str) -> set[str]:
    """`export.report.{schema,compare}` -> {export.report.schema, export.report.compare}."""
    names = set()
    for name in re.findall(r"`([\w.{},]+)`", cell):
        m = re.fullmatch(r"([\w.]*)\{([\w,]+)\}", name)
        names |= {m.group(1) + part for part in m.group(2).split(",")} if m else {name}
    return names


def test_the_front_door_stays_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_the_exit_code_table_is_export_errors():
    codes = {int(row[0]) for row in table_rows(section("Exit codes"))}
    assert codes == {v for k, v in vars(errors).items() if k.startswith("EXIT_")}


def test_the_code_layout_is_the_import_layers():
    rows = table_rows(section("Code layout"))
    assert len(rows) == len(LAYERS)
    seen: set[str] = set()
    for row, (layer, prefixes) in zip(rows, LAYERS, strict=True):
        wanted = {p for p in prefixes if not p.endswith(("__init__", "__main__"))} - seen  # a repeat: the lower wins
        assert expand(row[1]) == wanted, layer
        seen |= wanted


def tracked_readmes() -> list[str]:
    """Every README.md git tracks, outside the records of past runs (scripts/results/)."""
    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout: {e}")
    return [f for f in tracked.splitlines() if f.endswith("README.md") and not f.startswith("scripts/results/")]


def test_every_folder_readme_is_linked():
    readmes = {f for f in tracked_readmes() if f != "README.md"}
    linked = set(re.findall(r"\]\(([\w/]+/README\.md)", README.read_text(encoding="utf-8")))
    assert readmes <= linked, sorted(readmes - linked)


def test_what_never_ran_is_marked_so():
    rows = {row[0].strip("*"): row[1] for row in table_rows(section("Verification status"))}
    for part in NEVER_RUN:
        (name,) = [n for n in rows if n.endswith(part)]
        assert "never executed" in rows[name], name
    assert sum("never executed" in where for where in rows.values()) == len(NEVER_RUN)


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_of_every_readme_resolves():
    """A moved section or file leaves its links behind; this says where (paths and #anchors)."""
    broken = []
    for doc in [ROOT / f for f in tracked_readmes()]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(encoding="utf-8"), flags=re.M)
                if anchor not in {slug(h) for h in headings}:
                    broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
