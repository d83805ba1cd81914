"""pyproject.toml as packaging tools and pytest read it: the license as an SPDX expression with a setuptools floor
that accepts one (the `{ text = ... }` table form is deprecated, and setuptools stops accepting it on 2027-02-18),
and every pytest marker declared in use (pytest runs with --strict-markers, so an undeclared one is an error)."""

from __future__ import annotations

import re
from pathlib import Path

from export.inputs.files import load_toml

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = load_toml(ROOT / "pyproject.toml", what="pyproject.toml")
SPDX_FLOOR = "77.0.0"  # setuptools 77.0.0 reads project.license as an SPDX expression (PEP 639)


def test_the_license_is_an_spdx_expression_and_setuptools_can_read_it():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    from packaging.requirements import Requirement

    (setuptools,) = [Requirement(r) for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    assert not setuptools.specifier.contains("76.99") and setuptools.specifier.contains(SPDX_FLOOR), setuptools


def test_every_declared_marker_is_used_and_undeclared_ones_are_errors():
    options = PYPROJECT["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in options.get("addopts", "")
    declared = {m.split(":")[0].strip() for m in options["markers"]}
    text = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))
    used = set(re.findall(r"pytest\.mark\.(\w+)", text))
    assert declared <= used, f"declared but never used: {sorted(declared - used)}"
