"""Every repository path the code and docs cite exists: a results file a comment quotes as evidence, the test a
docstring says pins a behaviour, a module a README names. Paths are read from tracked text files, rooted at one of
the top-level folders below and ending in a file extension; a path inside another folder's tests/ is read whole,
not as its tail. A moved or deleted file leaves its citations behind, and this says where."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("export", "engines", "plugins", "scripts", "tests")
EXTENSIONS = ("py", "md", "json", "png", "cpp", "h", "cu", "yaml", "toml", "map", "pbtxt", "txt")
CITED = re.compile(rf"(?<![\w/.~-])((?:{'|'.join(TOP)})/[\w./-]*\.(?:{'|'.join(EXTENSIONS)}))\b")
TEXT = (".py", ".md", ".toml", ".txt", ".cpp", ".h", ".cu", ".yaml", ".pbtxt")
GENERATED = ("plugins/build/",)  # build outputs, named where the docs say how to make them
RECORDS = ("scripts/results/",)  # what past runs printed: paths as they were then, not citations


def tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout: {e}")
    names = [f for f in out.splitlines() if (f.endswith(TEXT) or f.startswith(".ci/")) and not f.startswith(RECORDS)]
    return [ROOT / f for f in names]


def missing_citations() -> list[str]:
    found = []
    for path in tracked_text_files():
        if not path.is_file():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for cited in CITED.findall(line):
                if not cited.startswith(GENERATED) and not (ROOT / cited).exists():
                    found.append(f"{path.relative_to(ROOT)}:{n}: {cited}")
    return found


def test_every_cited_path_exists():
    assert not missing_citations(), "cited but absent (moved? renamed?):\n" + "\n".join(missing_citations())


def test_the_pattern_reads_whole_paths():
    line = "see plugins/tests/contractTest.cpp and scripts/results/quant/quant_cpu.md, not tests/x"
    assert CITED.findall(line) == ["plugins/tests/contractTest.cpp", "scripts/results/quant/quant_cpu.md"]
