"""Dependencies run one way, read from every module's imports (AST, not regex).

- `plugins` is the bottom: it imports only itself and export's error/CLI leaves (export.errors, export.cli).
- `export` may import `plugins`; it imports `engines` only in the orchestrator (export/build.py) and in the
  stages that drive engines (export/stages/).
- `engines` may import `export` and `plugins`.
- The leaf modules import nothing from the project.
- Project imports sit at the top of a module, so its first lines show what it depends on.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("export", "engines", "plugins")
LEAVES = {"export/errors.py", "export/report.py", "export/thresholds.py", "export/reference.py",
          "export/atomic.py", "plugins/identity.py"}
PLUGINS_MAY_IMPORT = {"export.errors", "export.cli"}
EXPORT_DRIVERS = ("export/build.py", "export/stages/")


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "build" not in p.relative_to(ROOT).parts[1:-1])


def project_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, at module top) for every import of export/engines/plugins in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            is_package = (ROOT / node.module.replace(".", "/")).is_dir()  # `from export import cli` names a module
            names = [f"{node.module}.{a.name}" for a in node.names] if is_package else [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                found.append((node.lineno, name, id(node) in top))
    return found


def violation(rel: str, module: str) -> str | None:
    pkg = module.split(".")[0]
    if rel in LEAVES:
        return "a leaf module imports nothing from the project"
    if rel.startswith("plugins/") and pkg != "plugins" and not any(
            module == m or module.startswith(m + ".") for m in PLUGINS_MAY_IMPORT):
        return f"plugins may import only plugins and {sorted(PLUGINS_MAY_IMPORT)}"
    if rel.startswith("export/") and pkg == "engines" and not rel.startswith(EXPORT_DRIVERS):
        return "export imports engines only in export/build.py and export/stages/"
    return None


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way_and_sit_at_the_top(path):
    rel = path.relative_to(ROOT).as_posix()
    problems = []
    for line, module, at_top in project_imports(path):
        why = violation(rel, module)
        if why:
            problems.append(f"{rel}:{line} imports {module}: {why}")
        if not at_top:
            problems.append(f"{rel}:{line} imports {module} inside a function; put it at the top")
    assert not problems, "\n".join(problems)


def test_the_rule_catches_a_backwards_import(tmp_path):
    """The checker itself can fail: a leaf importing the project, export importing engines, plugins importing export."""
    assert violation("export/report.py", "export.errors")
    assert violation("export/validate.py", "engines.build")
    assert violation("plugins/build.py", "export.validate")
    assert violation("export/stages/engine.py", "engines.build") is None
    assert violation("engines/gate.py", "export.report") is None
    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef f():\n    from export.report import Report\n")
    assert project_imports(src) == [(4, "export.report", False)]
