"""Every TensorRT call whose result says whether it worked is checked, in engines/tensorrt/runner.py,
engines/tensorrt/builder.py and engines/cpp/embed.cpp (issues #13 item 7, #20 item 3). Read from the sources: they
need TensorRT and a GPU to run (tests/gpu/ runs them there), and an unchecked result would pass every run where
nothing goes wrong."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CHECKED_PY = {"set_input_shape", "set_tensor_address", "set_optimization_profile_async", "execute_async_v3"}
# Builder calls that answer failure with None (a null pointer), False or -1 (add_optimization_profile).
CHECKED_BUILDER = {
    "create_network",
    "create_builder_config",
    "create_optimization_profile",
    "create_timing_cache",
    "set_timing_cache",
    "add_optimization_profile",
    "get_timing_cache",
    "serialize",
    "build_serialized_network",
    "parse_from_file",
}


def unchecked_results(tree: ast.AST, methods: set[str], checker: str) -> list[str]:
    """Calls of `methods` whose result is never tested: a call is checked when it sits in the test of an
    if/while/assert, is the argument of `checker(...)`, or is assigned to a name that some if-test reads."""
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    tests = [n.test for n in ast.walk(tree) if isinstance(n, (ast.If, ast.While, ast.Assert))]
    in_tests = {id(n) for t in tests for n in ast.walk(t)}
    tested_names = {n.id for t in tests for n in ast.walk(t) if isinstance(n, ast.Name)}
    bad = []
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in methods):
            continue
        parent = parents[call]
        by_checker = isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) and parent.func.id == checker
        by_name = (
            isinstance(parent, ast.Assign)
            and len(parent.targets) == 1
            and isinstance(parent.targets[0], ast.Name)
            and parent.targets[0].id in tested_names
        )
        if not (id(call) in in_tests or by_checker or by_name):
            bad.append(f"line {call.lineno}: {call.func.attr}")
    return bad


def test_runner_checks_every_boolean_result():
    tree = ast.parse((ROOT / "engines" / "tensorrt" / "runner.py").read_text())
    unchecked = [
        f"line {node.lineno}: {node.value.func.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute)
        and node.value.func.attr in CHECKED_PY
    ]
    assert not unchecked, unchecked  # a bare call statement discards the bool TensorRT returns
    used = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert {"set_input_shape", "set_tensor_address"} <= used


def test_builder_checks_every_result_tensorrt_answers_failure_with():
    tree = ast.parse((ROOT / "engines" / "tensorrt" / "builder.py").read_text())
    assert not unchecked_results(tree, CHECKED_BUILDER, "_created")
    used = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert {"add_optimization_profile", "create_optimization_profile", "set_timing_cache"} <= used


def test_unchecked_results_finds_a_discarded_or_unread_result():
    """The checker itself: a bare call, a call passed on unchecked, and a result assigned but never tested."""
    src = (
        "def f(config, builder, p):\n"
        "    config.add_optimization_profile(p)\n"
        "    config.set_timing_cache(config.create_timing_cache(b''), ignore_mismatch=False)\n"
        "    net = builder.create_network(0)\n"
        "    ok = builder.create_builder_config()\n"
        "    if ok is None or config.add_optimization_profile(p) < 0:\n"
        "        raise ValueError\n"
        "    return _created(builder.create_optimization_profile(), 'x'), net\n"
    )
    bad = unchecked_results(ast.parse(src), CHECKED_BUILDER, "_created")
    assert sorted(bad) == [
        "line 2: add_optimization_profile",
        "line 3: create_timing_cache",
        "line 3: set_timing_cache",
        "line 4: create_network",
    ]


def test_embed_checks_set_tensor_address_and_tells_registered_from_unloadable():
    src = (ROOT / "engines" / "cpp" / "embed.cpp").read_text()
    code = "\n".join(line.split("//")[0] for line in src.splitlines())
    statements = [s.strip() for s in re.split(r"[;{}]", code)]
    bare = [
        s
        for s in statements
        if re.match(
            r"^[\w.>\-*]*(setTensorAddress|setInputShape|enqueueV3|"
            r"setOptimizationProfileAsync)\(",
            s,
        )
    ]
    assert not bare, bare
    # loadLibrary returns null also when the creator is already registered: that is asked before calling it
    # and before "cannot load", from the registry's list (TensorRT logs an error for every getCreator miss)
    load = code.split("void loadPlugin", 1)[1].split("\n}\n", 1)[0]
    assert "findCreatorV3One(" in load and "loadLibrary(" in load
    assert load.index("findCreatorV3One(") < load.index("loadLibrary(") < load.index("cannot load")
    assert not re.search(r"\bgetCreator\s*\(", code), "embed.cpp asks IPluginRegistry::getCreator"
