"""engines.tensorrt.plugin_library finds our creator in the registry's list of creators (registry.all_creators)
instead of asking registry.get_creator, whose miss TensorRT logs as an error on every first load (issue #20).

find_creator is a function of plain data: the creators here are plain objects carrying the three attributes the
TensorRT binding gives every creator kind (name, plugin_version, plugin_namespace). How load_plugins asks is
read from the source, since it needs TensorRT to run."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

from engines.tensorrt.plugin_library import find_creator
from plugins.identity import PLUGIN_NAMESPACE, PLUGIN_OP, PLUGIN_VERSION

SOURCE = Path(__file__).resolve().parents[3] / "engines" / "tensorrt" / "plugin_library.py"


def creator(name=PLUGIN_OP, version=PLUGIN_VERSION, namespace=PLUGIN_NAMESPACE):
    return SimpleNamespace(name=name, plugin_version=version, plugin_namespace=namespace)


DECOYS = [
    creator(name=PLUGIN_OP + "X"),
    creator(version=PLUGIN_VERSION + "0"),
    creator(namespace=""),  # REGISTER_TENSORRT_PLUGIN's namespace
    creator(name=PLUGIN_OP.lower()),
    object(),
    SimpleNamespace(name=PLUGIN_OP),
]


def test_nothing_registered_is_no_creator():
    assert find_creator(None) is None
    assert find_creator([]) is None


def test_one_field_off_is_another_creator():
    assert find_creator(DECOYS) is None


def test_ours_is_found_among_others():
    ours = creator()
    assert find_creator([*DECOYS, ours, creator(namespace="")]) is ours
    assert find_creator(iter([ours])) is ours  # any iterable, read once


def test_other_identities_can_be_asked_for():
    other = creator(name="ROIAlign_TRT", version="2", namespace="")
    assert find_creator([creator(), other], "ROIAlign_TRT", "2", "") is other


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and (getattr(n.func, "attr", None) == name or getattr(n.func, "id", None) == name)
    ]


def test_load_plugins_asks_the_list_and_get_creator_only_when_there_is_none():
    tree = ast.parse(SOURCE.read_text())
    funcs = {f.name: f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
    assert not _calls(funcs["load_plugins"], "get_creator")
    assert len(_calls(funcs["load_plugins"], "is_registered")) == 2  # before load_library, and after a None from it
    # The one get_creator left: the fallback for a binding that could not list the creators (all_creators is None).
    (call,) = _calls(tree, "get_creator")
    guards = [n for n in ast.walk(funcs["is_registered"]) if isinstance(n, ast.If) and call in ast.walk(n)]
    assert guards and ast.unparse(guards[0].test) == "creators is None"
