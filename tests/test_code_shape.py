"""The product's code stays readable: no function over 80 lines, no module over 450 (the structure issue's
limits). Test code and build folders are not counted."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 450


def product_modules() -> list[Path]:
    return sorted(
        p
        for pkg in ("export", "engines", "plugins")
        for p in (ROOT / pkg).rglob("*.py")
        if "build" not in p.relative_to(ROOT).parts[1:-1]
    )


def long_functions() -> list[str]:
    found = []
    for path in product_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.end_lineno - node.lineno >= MAX_FUNCTION_LINES
            ):
                found.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
                )
    return found


def test_no_function_over_80_lines():
    assert not long_functions(), "split these along their natural steps:\n" + "\n".join(long_functions())


def test_no_module_over_450_lines():
    long = [
        f"{p.relative_to(ROOT)} ({n} lines)"
        for p in product_modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, "split these into modules of one concept each:\n" + "\n".join(long)
