"""Dependencies run one way, read from every module's imports (AST, not regex), against one table of layers.

Every module of export/, engines/ and plugins/ belongs to exactly one layer of LAYERS (the longest prefix
that names it decides). A module may import modules of its own layer and of the layers below it; a
leaf imports nothing from the project. Project imports sit at the top of a module, so its first lines
show what it depends on. README's "Code layout" is drawn from this table.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("export", "engines", "plugins")

# Lowest first. (layer name, module prefixes): a prefix names a module or a package.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "leaves: import nothing from the project",
        (
            "export.__init__",
            "export.folder.__init__",
            "export.report.__init__",
            "export.checkpoint.__init__",
            "export.errors",
            "export.report.schema",
            "export.reference",
            "export.folder.atomic",
            "export.spec",
            "export.progress",
            "export.report.compare",
            "export.report.reproduce",
            "plugins.identity",
        ),
    ),
    (
        "shared: CLI path, files, ONNX I/O, the report on disk, the verdict",
        (
            "export.cli.entry",
            "export.inputs.numbers",
            "export.inputs.files",
            "export.inputs.graph_file",
            "export.onnx_io",
            "export.folder.digest",
            "export.report.markdown",
            "export.report.persist",
            "export.report.thresholds",
            "export.report.graph_precision",
            "export.folder.artifacts",
            "export.report.verdict",
            "export.folder.layout",
            "export.folder.ownership",
            "export.memory",
            "export.folder.disk",
            "export.families",
        ),
    ),
    ("plugins: the C++/CUDA library's build and location", ("plugins",)),
    ("export: checkpoint -> ONNX -> passes -> validation -> diagnosis", ("export", "export.diagnose")),
    ("engines.tensorrt: the only code that calls TensorRT", ("engines.__init__", "engines.tensorrt")),
    ("engines: Triton, serving, gate, bench, client and their CLIs", ("engines",)),
    (
        "orchestrator: export.build, its plan and the stages it runs",
        (
            "export.build",
            "export.build_flags",
            "export.build_plan",
            "export.build_report",
            "export.build_tasks",
            "export.stages",
            "export.__main__",
        ),
    ),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts)


def test_every_prefix_names_one_layer():
    """A prefix listed twice would sit in the first layer only (layer_of keeps the first of equal length)."""
    prefixes = [prefix for _, group in LAYERS for prefix in group]
    assert len(prefixes) == len(set(prefixes)), sorted({p for p in prefixes if prefixes.count(p) > 1})


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix naming `module` (a package's modules belong to it)."""
    best, best_len = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    if best < 0:
        raise KeyError(f"{module} is in no layer of LAYERS; add it to the table")
    return best


def modules() -> list[Path]:
    return sorted(
        p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "build" not in p.relative_to(ROOT).parts[1:-1]
    )


def project_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, at module top) for every import of export/engines/plugins in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            is_package = (ROOT / node.module.replace(".", "/")).is_dir()  # `from export import memory` names a module
            names = [f"{node.module}.{a.name}" for a in node.names] if is_package else [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                found.append((node.lineno, name, id(node) in top))
    return found


def violation(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported`, or None. Both are dotted module names."""
    if (ROOT / imported.replace(".", "/")).is_dir():
        imported += ".__init__"
    mine, theirs = layer_of(importer), layer_of(imported)
    if mine == 0:
        return f"{importer} is a leaf ({LAYERS[0][0]})"
    if theirs > mine:
        return f"layer '{LAYERS[mine][0]}' may not import layer '{LAYERS[theirs][0]}'"
    return None


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_down_the_layers_and_sit_at_the_top(path):
    name = module_name(path)
    problems = []
    for line, module, at_top in project_imports(path):
        why = violation(name, module)
        if why:
            problems.append(f"{name}:{line} imports {module}: {why}")
        if not at_top:
            problems.append(f"{name}:{line} imports {module} inside a function; put it at the top")
    assert not problems, "\n".join(problems)


def test_every_module_has_a_layer():
    missing = []
    for path in modules():
        try:
            layer_of(module_name(path))
        except KeyError as e:
            missing.append(str(e))
    assert not missing, "\n".join(missing)


def test_the_rule_catches_a_backwards_import(tmp_path):
    """The checker itself can fail: a leaf importing the project, export importing engines, plugins importing
    export's core, the TensorRT layer importing serving."""
    assert violation("export.report.schema", "export.errors")
    assert violation("export.validate", "engines.tensorrt.builder")
    assert violation("plugins.build", "export.validate")
    assert violation("engines.tensorrt.runner", "engines.serving.server")
    assert violation("export.stages.engine", "engines.tensorrt.builder") is None
    assert violation("engines.gate", "export.report.schema") is None
    assert violation("plugins.build", "export.cli.entry") is None
    with pytest.raises(KeyError):
        layer_of("elsewhere.module")
    src = tmp_path / "m.py"
    src.write_text("import os\n\ndef f():\n    from export.report.schema import Report\n")
    assert project_imports(src) == [(4, "export.report.schema", False)]
