"""A flag two commands take means one thing: one default, one set of choices, one type and action in every command
that has it, unless DIFFERENT says why it is another flag under the same name; the flags export.cli_flags defines
are that module's definition wherever they appear (help included), so they cannot drift apart again. And
`--pooling` defaults to the build as built everywhere (the reason is export/cli_flags.py's docstring)."""

from __future__ import annotations

import argparse
import importlib

import pytest

from export import cli_flags
from export.cli import Parser
from export.passes.pooling import POOLINGS

COMMANDS = {  # command -> module whose build_parser() makes its parser
    "export.build": "export.build",
    "export.diagnose": "export.diagnose.__main__",
    "engines.serving": "engines.serving.__main__",
    "engines.triton": "engines.triton.__main__",
    "engines.gate": "engines.gate",
    "engines.build": "engines.build",
    "engines.bench": "engines.bench",
    "engines.client": "engines.client",
    "plugins.build": "plugins.build",
}
DIFFERENT = {  # flag -> why the commands that take it mean different things
    "--out": "each command's own output: a build folder, a model repository, a plan's folder, a bench folder",
    "--json": "export.diagnose writes its JSON to a path; the others print theirs on stdout",
    "--batch": "an engine's batch range (min,opt,max), a diagnosis batch, a benchmark's list of batches",
    "--seq": "a diagnosis length, a benchmark's list of lengths",
    "--precision": "what export.build makes, what engines.build records, what export.diagnose judges",
    "--max-batch": "engines.triton reads the engine's batch max by default; engines.serving has no engine",
}
OWN_MEANING = {("export.build", "--pooling")}  # pools the TensorRT-bound graph at build time; same choices, default


def parsers() -> dict[str, argparse.ArgumentParser]:
    return {name: importlib.import_module(mod).build_parser() for name, mod in COMMANDS.items()}


def flags(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in p._actions for o in a.option_strings if o.startswith("--")}


def signature(a: argparse.Action) -> tuple:
    choices = tuple(a.choices) if a.choices is not None else None
    return type(a).__name__, a.dest, a.default, choices, a.type, a.nargs, a.const


def test_a_flag_two_commands_take_has_one_default_choices_and_type():
    by_flag: dict[str, dict[str, tuple]] = {}
    for name, p in parsers().items():
        for flag, action in flags(p).items():
            by_flag.setdefault(flag, {})[name] = signature(action)
    mixed = {
        flag: defs
        for flag, defs in by_flag.items()
        if len(defs) > 1 and len(set(defs.values())) > 1 and flag not in DIFFERENT
    }
    assert not mixed, mixed
    assert all(len(by_flag.get(flag, {})) > 1 for flag in DIFFERENT), "a DIFFERENT entry no two commands share"


@pytest.mark.parametrize(
    "flag,add",
    [
        ("--build", cli_flags.add_build),
        ("--pooling", cli_flags.add_served_pooling),
        ("--thresholds", cli_flags.add_thresholds),
        ("--trust-pickle", cli_flags.add_trust_pickle),
    ],
)
def test_shared_flags_are_the_shared_definition(flag, add):
    reference = Parser(prog="ref")
    add(reference)
    want = flags(reference)[flag]
    takers = {name: flags(p)[flag] for name, p in parsers().items() if flag in flags(p)}
    assert len(takers) >= 2, takers
    for name, action in takers.items():
        assert signature(action) == signature(want), name
        if (name, flag) not in OWN_MEANING:
            assert action.help == want.help, name


def test_pooling_defaults_to_the_build_as_built_everywhere():
    takers = {name: flags(p)["--pooling"] for name, p in parsers().items() if "--pooling" in flags(p)}
    assert set(takers) == {"export.build", "engines.serving", "engines.triton"}
    assert {a.default for a in takers.values()} == {cli_flags.DEFAULT_POOLING} == {"none"}
    assert all(tuple(a.choices) == POOLINGS for a in takers.values())


def test_verbose_is_debug_in_every_command():
    for name, p in parsers().items():
        assert flags(p)["--verbose"] is flags(p)["--debug"], name
        assert p.parse_args([*REQUIRED.get(name, []), "--verbose"]).debug, name


REQUIRED = {  # the least each command's parser accepts
    "export.build": ["--model", "m.pt"],
    "engines.serving": ["--build", "b"],
    "engines.triton": ["--build", "b", "--out", "o"],
    "engines.gate": ["report.json"],
    "engines.build": ["m.onnx"],
    "engines.client": ["--vocab", "v.txt", "--model", "m", "text"],
}
