"""A flag two commands take means one thing: one default, one set of choices, one type and action in every command
that has it, unless DIFFERENT says why it is another flag under the same name; the flags export.cli.flags defines
are that module's definition wherever they appear (help included), so they cannot drift apart again. And
`--pooling` defaults to the build as built everywhere (the reason is export/cli/flags.py's docstring)."""

from __future__ import annotations

import argparse
import importlib

import onnx
import pytest

from export.cli import flags as cli_flags
from export.cli.entry import Parser
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
OWN_MEANING = {  # (command, flag) -> why that command's flag is another one under the same name
    ("export.build", "--pooling"): "what the TensorRT-bound graph computes at build time: auto|none|MODE[+MODE]",
}


def parsers() -> dict[str, argparse.ArgumentParser]:
    return {name: importlib.import_module(mod).build_parser() for name, mod in COMMANDS.items()}


def flags(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in p._actions for o in a.option_strings if o.startswith("--")}


PROBES = ("-1", "0", "1", "2", "64", "65", "4096", "65536", "1.5", "1G", "x")


def converts(t) -> tuple | None:
    """What an argparse type makes of a few inputs (a value, or that it refused): two types are the same flag's
    when they agree on all of them (export.inputs.numbers' int_arg(lo, hi) makes a new function per call)."""
    if t is None:
        return None
    out = []
    for text in PROBES:
        try:
            out.append(repr(t(text)))
        except (ValueError, argparse.ArgumentTypeError):
            out.append("refused")
    return tuple(out)


def signature(a: argparse.Action) -> tuple:
    choices = tuple(a.choices) if a.choices is not None else None
    return type(a).__name__, a.dest, a.default, choices, converts(a.type), a.nargs, a.const


def test_a_flag_two_commands_take_has_one_default_choices_and_type():
    by_flag: dict[str, dict[str, tuple]] = {}
    for name, p in parsers().items():
        for flag, action in flags(p).items():
            if (name, flag) not in OWN_MEANING:
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
        if (name, flag) not in OWN_MEANING:
            assert signature(action) == signature(want) and action.help == want.help, name


def test_pooling_of_a_served_build_defaults_to_the_builds_own_in_both_commands(served, pooled, tmp_path):
    """engines.serving and engines.triton: one --pooling (POOLINGS, default None = the build's own). A pooled build
    serves its own pooling from both; a plain RoFormer build gets its family's (mean) from engines.serving and none
    from engines.triton, whose TensorRT model could not have it."""
    from engines.serving.ort_model import load_build
    from engines.triton import __main__ as triton
    from export.passes.pooling import declared_pooling

    takers = {name: flags(p)["--pooling"] for name, p in parsers().items() if "--pooling" in flags(p)}
    served_by = {name for name in takers if (name, "--pooling") not in OWN_MEANING}
    assert served_by == {"engines.serving", "engines.triton"}
    assert {takers[n].default for n in served_by} == {None} and all(
        tuple(takers[n].choices) == POOLINGS for n in served_by
    )
    args = {n: importlib.import_module(COMMANDS[n]).build_parser().parse_args(REQUIRED[n]) for n in served_by}
    assert {a.pooling for a in args.values()} == {None}
    assert declared_pooling(load_build(pooled, None)[0]) == declared_pooling(load_build(pooled, "none")[0])
    assert declared_pooling(load_build(served.path, None)[0]).mode == "mean"  # RoFormer's family default
    for build, name in ((served.path, "plain"), (pooled, "pooled")):
        assert triton.main(["--build", str(build), "--out", str(tmp_path / name), "--json"]) == 0
    twin = onnx.load(str(tmp_path / "plain" / "tiny_onnx" / "1" / "model.onnx"), load_external_data=False)
    assert [o.name for o in twin.graph.output] == ["last_hidden_state"]
    pooled_twin = onnx.load(str(tmp_path / "pooled" / "tiny_onnx" / "1" / "model.onnx"), load_external_data=False)
    assert "sentence_embedding" in [o.name for o in pooled_twin.graph.output]


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
