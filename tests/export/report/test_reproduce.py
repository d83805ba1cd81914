"""export.report.reproduce: the trtexec / Polygraphy commands in report.md, pinned to the structure those tools accept.

The flag sets below were read by hand from NVIDIA/TensorRT tags v10.16 and v11.1
(samples/common/sampleOptions.cpp; tools/Polygraphy/polygraphy/tools/args/**). Only flags present in both
tags are allowed, so a command works with either major.
"""

from __future__ import annotations

import shlex

import pytest

from export.report.reproduce import POLY_INPUTS, POLY_OUTPUTS, render_markdown, reproduce_commands
from plugins import identity

# trtexec: flags (name before '=') that both tags parse. --fp16/--bf16 exist in 10.16 only.
TRTEXEC_FLAGS = {
    "--onnx",
    "--saveEngine",
    "--stronglyTyped",
    "--dynamicPlugins",
    "--staticPlugins",
    "--profile",
    "--minShapes",
    "--optShapes",
    "--maxShapes",
    "--shapes",
    "--useProfile",
}
POLYGRAPHY_FLAGS = {
    "--trt",
    "--onnxrt",
    "--strongly-typed",
    "--plugins",
    "--trt-min-shapes",
    "--trt-opt-shapes",
    "--trt-max-shapes",
    "--optimization-profile",
    "--input-shapes",
    "--val-range",
    "--save-inputs",
    "--save-outputs",
    "--load-inputs",
    "--load-outputs",
    "--check-error-stat",
    "--atol",
    "--rtol",
}

PROFILES = [
    {"index": 0, "batch": [1, 4, 8], "sequence": [1, 16, 16]},
    {"index": 1, "batch": [1, 4, 8], "sequence": [17, 64, 64]},
]


def commands(**over):
    kw = dict(
        trt_onnx="model.rope-plugin.fp16.onnx",
        reference_onnx="model.onnx",
        plan="model.fp16.trtexec.plan",
        profiles=PROFILES,
        precision="fp16",
        vocab_size=1000,
        type_vocab_size=2,
        atol=0.02,
        rtol=0.001,
        plugin_lib=f"plugins/build/{identity.PLUGIN_LIB}",
        static_plugin_lib=f"plugins/build/{identity.STATIC_PLUGIN_LIB}",
        inputs=("input_ids", "attention_mask", "token_type_ids"),
    )
    kw.update(over)
    return reproduce_commands(**kw)


def flags(argv):
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def test_trtexec_one_profile_group_per_profile_strongly_typed_dynamic_plugin():
    (cmd,) = commands()["trtexec"]
    argv = shlex.split(cmd)
    assert argv[0] == "trtexec" and set(flags(argv)) <= TRTEXEC_FLAGS
    assert "--stronglyTyped" in argv and not {"--fp16", "--bf16", "--best"} & set(argv)
    assert f"--dynamicPlugins=plugins/build/{identity.PLUGIN_LIB}" in argv
    opts = [a for a in argv if a.startswith("--")]
    starts = [j for j, a in enumerate(opts) if a.startswith("--profile=")]
    assert len(starts) == len(PROFILES)
    for i, s in enumerate(starts):  # each group: --profile=i, then its min, opt, max
        assert opts[s] == f"--profile={i}"
        assert flags(opts[s + 1 : s + 4]) == ["--minShapes", "--optShapes", "--maxShapes"]
    assert flags(opts).count("--minShapes") == len(PROFILES)  # never repeated outside a --profile group
    assert "--minShapes=input_ids:1x17,attention_mask:1x17,token_type_ids:1x17" in argv
    assert "--maxShapes=input_ids:8x64,attention_mask:8x64,token_type_ids:8x64" in argv
    assert "--useProfile=1" in argv and "--shapes=input_ids:8x64,attention_mask:8x64,token_type_ids:8x64" in argv


def test_polygraphy_builds_with_the_self_registering_library_then_compares_in_ort():
    build, compare = (shlex.split(c) for c in commands()["polygraphy"])
    assert build[:4] == ["polygraphy", "run", "model.rope-plugin.fp16.onnx", "--trt"]
    assert set(flags(build)) <= POLYGRAPHY_FLAGS and set(flags(compare)) <= POLYGRAPHY_FLAGS
    assert build[build.index("--plugins") + 1].endswith(identity.STATIC_PLUGIN_LIB)
    assert flags(build).count("--trt-min-shapes") == len(PROFILES)
    i = build.index("--trt-max-shapes")
    assert build[i + 1 : i + 4] == ["input_ids:[8,16]", "attention_mask:[8,16]", "token_type_ids:[8,16]"]
    v = build.index("--val-range")
    assert build[v + 1 : v + 4] == ["input_ids:[0,999]", "attention_mask:[1,1]", "token_type_ids:[0,1]"]
    assert build[build.index("--save-inputs") + 1] == POLY_INPUTS
    assert build[build.index("--save-outputs") + 1] == POLY_OUTPUTS
    assert compare[:4] == ["polygraphy", "run", "model.onnx", "--onnxrt"]
    assert compare[compare.index("--load-inputs") + 1] == POLY_INPUTS
    assert compare[compare.index("--load-outputs") + 1] == POLY_OUTPUTS
    assert compare[compare.index("--check-error-stat") + 1] == "max"
    assert compare[compare.index("--atol") + 1] == "0.02" and compare[compare.index("--rtol") + 1] == "0.001"


def test_notes_say_which_library_and_that_cosine_is_not_checked():
    notes = " ".join(commands()["notes"])
    assert "cosine" in notes and "not checked" in notes
    assert identity.PLUGIN_LIB in notes and identity.STATIC_PLUGIN_LIB in notes


def test_notes_say_stronglytyped_is_a_no_op_in_trtexec_11():
    """v11.1 samples/common/sampleOptions.cpp: "--stronglyTyped [Deprecated] Strongly typed network is now enabled by
    default. This flag is a no-op."; v10.16 needs it for a strongly typed network."""
    (note,) = [n for n in commands()["notes"] if "--stronglyTyped" in n]
    assert "trtexec 11.x" in note and "deprecated no-op" in note and "10.x needs it" in note


def test_onnx_rope_graph_needs_no_plugin_and_choices_rank_3():
    c = commands(
        plugin_lib=None,
        static_plugin_lib=None,
        trt_onnx="model.rope-onnx.fp16.onnx",
        profiles=[{"index": 0, "batch": [1, 1, 2], "choices": [4, 4, 4], "sequence": [1, 32, 32]}],
        rank=3,
    )
    assert "Plugins" not in c["trtexec"][0] and "--plugins" not in c["polygraphy"][0]
    assert "--maxShapes=input_ids:2x4x32,attention_mask:2x4x32,token_type_ids:2x4x32" in shlex.split(c["trtexec"][0])
    with pytest.raises(ValueError):
        commands(profiles=[])


def test_markdown_holds_every_command():
    c = commands()
    md = render_markdown(c)
    assert all(cmd in md for cmd in c["trtexec"] + c["polygraphy"]) and md.count("```") == 4


def test_a_model_without_token_type_ids_gets_commands_without_them():
    """The inputs are the graph's (ModernBERT has no token_type_ids): no shape, no value range for a missing input."""
    cmds = commands(inputs=("input_ids", "attention_mask"), type_vocab_size=None)
    text = " ".join(cmds["trtexec"] + cmds["polygraphy"])
    assert "token_type_ids" not in text and "input_ids:[0,999]" in text and "attention_mask:" in text
