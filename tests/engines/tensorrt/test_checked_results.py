"""Every TensorRT call whose result says whether it worked is checked, in engines/tensorrt/runner.py and
engines/cpp/embed.cpp (issue #13, item 7). Read from the sources: both need TensorRT and a GPU to run
(tests/gpu/ runs them there), and an unchecked result would pass every run where nothing goes wrong."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CHECKED_PY = {"set_input_shape", "set_tensor_address", "set_optimization_profile_async", "execute_async_v3"}


def test_runner_checks_every_boolean_result():
    tree = ast.parse((ROOT / "engines" / "tensorrt" / "runner.py").read_text())
    unchecked = [f"line {node.lineno}: {node.value.func.attr}" for node in ast.walk(tree)
                 if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                 and isinstance(node.value.func, ast.Attribute) and node.value.func.attr in CHECKED_PY]
    assert not unchecked, unchecked  # a bare call statement discards the bool TensorRT returns
    used = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert {"set_input_shape", "set_tensor_address"} <= used


def test_embed_checks_set_tensor_address_and_tells_registered_from_unloadable():
    src = (ROOT / "engines" / "cpp" / "embed.cpp").read_text()
    code = "\n".join(line.split("//")[0] for line in src.splitlines())
    statements = [s.strip() for s in re.split(r"[;{}]", code)]
    bare = [s for s in statements if re.match(r"^[\w.>\-*]*(setTensorAddress|setInputShape|enqueueV3|"
                                              r"setOptimizationProfileAsync)\(", s)]
    assert not bare, bare
    # loadLibrary returns null also when the creator is already registered: that is asked before calling it
    # and before "cannot load", from the registry's list (TensorRT logs an error for every getCreator miss)
    load = code.split("void loadPlugin", 1)[1].split("\n}\n", 1)[0]
    assert "findCreatorV3One(" in load and "loadLibrary(" in load
    assert load.index("findCreatorV3One(") < load.index("loadLibrary(") < load.index("cannot load")
    assert not re.search(r"\bgetCreator\s*\(", code), "embed.cpp asks IPluginRegistry::getCreator"
