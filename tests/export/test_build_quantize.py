"""export.build --precision int8 | fp8 end to end on the tiny checkpoint: the Q/DQ graph and the CPU twin are written,
validated in ONNX Runtime against PyTorch and gated; the rotary rewrite is the fp32 build's; calibration data and
mistakes with it; the same data gives the same files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import onnx
import pytest

from engines.gate import main as gate
from export.build import main as build
from export.folder.digest import sha256_file
from export.folder.layout import MANIFEST
from export.onnx_io import external_data_files
from export.passes.lowering import with_rotary_function
from export.passes.quantize.cpu_twin import write_cpu_twin
from plugins.identity import PLUGIN_OP
from tests.export.cli.test_entry import assert_clean_failure, run_cli
from tests.fixtures.tiny_build import FAST, build_args


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def build_tiny(ckpt: Path, out: Path, *flags: str) -> int:
    """export.build of `ckpt` into `out` at the fast test settings; its exit code."""
    return build(build_args(ckpt, out, *flags))


def test_int8_built_is_validated_gated_and_keeps_the_rotary_rewrite(int8_built, built):
    r, plain = report(int8_built), report(built)
    assert r["passed"] and r["artifacts"]["tensorrt-onnx"] == "model.rope-plugin.int8.onnx"
    assert r["rewrite"] == plain["rewrite"]  # the rotary pass and its verification: the fp32 build's
    graphs = {c["graph"] for c in r["validation"]}
    assert {"rope-plugin.int8", "onnx.int8-cpu"} <= graphs
    for c in r["validation"]:
        if c["graph"] in ("rope-plugin.int8", "onnx.int8-cpu"):
            assert c["precision"] == "int8" and c["passed"], c
    assert {c["padded_rows"] for c in r["validation"] if c["graph"] == "rope-plugin.int8"} >= {0, 2}
    q = r["quantization"]
    assert q["structure_problems"] == [] and q["opset"] == {"source": 17, "graph": 19}
    assert q["calibration"]["source"] == "synthetic" and "unknown" in q["calibration"]["note"]
    assert re.fullmatch(r"[0-9a-f]{64}", q["calibration"]["sha256"])
    assert q["activation_scales"] and all(v["scale"] > 0 for v in q["activation_scales"].values())
    assert q["fallback"]["mode"] == "auto" and q["fallback"]["passed"]
    model = onnx.load(str(int8_built / "model.rope-plugin.int8.onnx"), load_external_data=False)
    source = onnx.load(str(int8_built / "model.rope-plugin.onnx"), load_external_data=False)
    # the rotary sites as the verified rewrite left them: the same nodes, reading and writing the same tensors
    # with the same attributes (Q/DQ sit on MatMul inputs only), so the rewrite's verification holds for them
    rotary = [n for n in model.graph.node if n.op_type == PLUGIN_OP]
    assert rotary and rotary == [n for n in source.graph.node if n.op_type == PLUGIN_OP]
    with_rotary_function(model)  # the plugin's node checks
    assert gate([str(int8_built / "report.json")]) == 0
    assert "## Quantization: int8" in (int8_built / "report.md").read_text()


def test_the_gate_rechecks_int8_thresholds(int8_built, tmp_path):
    strict = tmp_path / "strict.toml"
    strict.write_text('[int8."*"."*"]\natol = 0.0\nrtol = 0.0\nmin_cosine = 1.0\n')
    assert gate([str(int8_built / "report.json"), "--thresholds", str(strict)]) == 1


def test_recorded_structure_problems_fail_the_gate(int8_built, tmp_path, capsys):
    """Issue 27 failure 3: a report whose quantization.structure_problems lists an unquantized MatMul (the build's
    own exit-1 condition) passed the gate once its `failure` line was gone."""
    out = tmp_path / "int8"
    shutil.copytree(int8_built, out)
    r = report(out)
    r["quantization"]["structure_problems"] = ["/encoder/layer.0/attention/self/query/MatMul: no Q/DQ on its input"]
    (out / "report.json").write_text(json.dumps(r))
    assert gate([str(out)]) == 1
    assert "departs from its placement" in capsys.readouterr().out


def test_an_int8_graph_relabelled_fp8_fails_the_gate(int8_built, tmp_path, capsys):
    out = tmp_path / "int8"
    shutil.copytree(int8_built, out)
    r = report(out)
    r["artifacts"]["rope-plugin.fp8"] = r["artifacts"].pop("rope-plugin.int8")
    for c in r["validation"]:
        if c["graph"] == "rope-plugin.int8":
            c["graph"], c["precision"] = "rope-plugin.fp8", "fp8"
    r["quantization"]["format"] = "fp8"
    (out / "report.json").write_text(json.dumps(r))
    assert gate([str(out)]) == 1
    assert "model.rope-plugin.int8.onnx is int8, not fp8" in capsys.readouterr().out


def test_cpu_twin_is_the_one_its_recipe_makes_from_the_fully_loaded_graph(int8_built, tmp_path):
    """The twin's fusions run on the graph without its MatMul weights (they never read them) and, beside the source,
    the fused graph reads them from the source's data file: the twin is still the recipe's, tensor for tensor, as
    ORT's optimizer and quantizer make it from the graph loaded whole (the way it was made before)."""
    from onnxruntime.transformers.optimizer import optimize_model

    from export.passes.quantize.cpu_twin import quantize_matmuls

    cfg = json.loads((int8_built / "report.json").read_text())["model"]
    src = tmp_path / "src"
    src.mkdir()
    for f in ("model.onnx", "model.onnx.data"):
        shutil.copyfile(int8_built / f, src / f)
    ref = tmp_path / "ref"
    ref.mkdir()
    optimize_model(
        str(src / "model.onnx"), model_type="bert", num_heads=cfg["heads"], hidden_size=cfg["hidden"], opt_level=0
    ).save_model_to_file(str(ref / "fused.onnx"), use_external_data_format=True)
    quantize_matmuls(ref / "fused.onnx", ref / "twin.onnx")
    ours = src / "model.int8-cpu.onnx"
    write_cpu_twin(src / "model.onnx", ours, cfg["heads"], cfg["hidden"])
    assert onnx.load(str(ours)).SerializeToString() == onnx.load(str(ref / "twin.onnx")).SerializeToString()
    assert sorted(p.name for p in src.iterdir()) == sorted(
        ["model.onnx", "model.onnx.data", ours.name, ours.name + ".data"]
    )


def test_cpu_twin_shares_the_fp32_weights_it_did_not_change(int8_built):
    r = report(int8_built)
    twin = r["artifacts"]["onnx.int8-cpu"]
    assert twin == "model.int8-cpu.onnx" and r["quantization"]["cpu_twin"]["source"] == "model.onnx"
    assert external_data_files(int8_built / twin) == ["model.int8-cpu.onnx.data", "model.onnx.data"]
    m = onnx.load(str(int8_built / twin), load_external_data=False)
    assert {n.op_type for n in m.graph.node} >= {"DynamicQuantizeLinear", "MatMulInteger"}
    written = {p.name for p in int8_built.iterdir()}  # no leftovers of ORT's quantizer (its inferred copy, temp dirs)
    assert written == {
        "model.onnx",
        "model.onnx.data",
        "model.rope-plugin.onnx",
        "model.rope-plugin.int8.onnx",
        "model.rope-plugin.int8.onnx.data",
        "model.int8-cpu.onnx",
        "model.int8-cpu.onnx.data",
        "report.json",
        "report.md",
        MANIFEST,
    }


def test_fp8_build_with_its_defaults_runs_in_onnx_runtime(tiny_ckpt, tmp_path):
    """fp16 as the high precision and the fallback on: the graph TensorRT gets by default, validated in ORT."""
    out = tmp_path / "fp8-default"
    assert build_tiny(tiny_ckpt, out, "--precision", "fp8") == 0
    r = report(out)
    cases = [c for c in r["validation"] if c["graph"] == "rope-plugin.fp8"]
    assert r["passed"] and cases and all(c["precision"] == "fp8" and c["passed"] for c in cases)
    assert r["quantization"]["high_precision"] == "fp16" and r["quantization"]["structure_problems"] == []
    m = onnx.load(str(out / "model.rope-plugin.fp8.onnx"), load_external_data=False)
    types = {t.data_type for t in m.graph.initializer}
    assert {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT16} <= types


def test_fp8_build_with_fp32_high_precision(tiny_ckpt, tmp_path):
    out = tmp_path / "fp8"
    assert build_tiny(tiny_ckpt, out, "--precision", "fp8", "--quant-high", "fp32", "--quant-fallback", "none") == 0
    r = report(out)
    assert r["passed"] and "onnx.int8-cpu" not in r["artifacts"]  # the CPU twin is INT8 only
    m = onnx.load(str(out / "model.rope-plugin.fp8.onnx"), load_external_data=False)
    types = {t.data_type for t in m.graph.initializer}
    assert onnx.TensorProto.FLOAT8E4M3FN in types and onnx.TensorProto.FLOAT16 not in types
    assert r["quantization"]["fallback"] == {"mode": "none"} and r["quantization"]["high_precision"] == "fp32"
    assert {p.name for p in out.iterdir()} == {
        "model.onnx",
        "model.onnx.data",
        "model.rope-plugin.onnx",
        "model.rope-plugin.fp8.onnx",
        "model.rope-plugin.fp8.onnx.data",
        "report.json",
        "report.md",
        MANIFEST,
    }


def test_rope_onnx_int8_keeps_every_rotary_embedding(tiny_ckpt, tmp_path):
    out = tmp_path / "ro"
    assert build_tiny(tiny_ckpt, out, "--rope", "onnx", "--precision", "int8", "--quant-fallback", "none") == 0
    r = report(out)
    assert r["passed"] and r["artifacts"]["rope-onnx.int8-cpu"] == "model.rope-onnx.int8-cpu.onnx"
    before = onnx.load(str(out / "model.rope-onnx.onnx"), load_external_data=False)
    after = onnx.load(str(out / "model.rope-onnx.int8.onnx"), load_external_data=False)
    count = [sum(n.op_type == "RotaryEmbedding" for n in m.graph.node) for m in (before, after)]
    assert count[0] == count[1] == r["rewrite"]["expected"]


def test_text_calibration_is_recorded_and_the_same_data_gives_the_same_files(tiny_ckpt, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("hello world\nabc def ghi\n" * 4)
    outs = [tmp_path / f"c{i}" for i in range(2)]
    for out in outs:
        assert (
            build_tiny(
                tiny_ckpt,
                out,
                "--precision",
                "int8",
                "--calib",
                str(calib),
                "--calib-method",
                "entropy",
                "--quant-fallback",
                "none",
            )
            == 0
        )
    c = report(outs[0])["quantization"]["calibration"]
    assert c["source"] == str(calib) and c["samples"] == 8 and "note" not in c and "Tokenizer" in c["tokenizer"]
    files = [
        "model.rope-plugin.int8.onnx",
        "model.rope-plugin.int8.onnx.data",
        "model.int8-cpu.onnx",
        "model.int8-cpu.onnx.data",
    ]
    assert [sha256_file(outs[0] / f) for f in files] == [sha256_file(outs[1] / f) for f in files]


def test_text_calibration_without_a_vocab_is_refused_before_work(make_ckpt, tmp_path, capsys):
    ckpt, _ = make_ckpt()  # no vocab.txt beside it
    calib = tmp_path / "calib.txt"
    calib.write_text("hello\n")
    out = tmp_path / "out"
    code, lines = run_cli(
        ["--model", str(ckpt), "--out", str(out), "--precision", "int8", "--calib", str(calib)], capsys
    )
    assert_clean_failure(
        code, lines, out, r"no tokenizer.json or vocab.txt beside the checkpoint .* pass --calib-vocab PATH"
    )


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("empty.txt", "", r"has no samples; put one sample per line"),
        ("blank.txt", "\n  \n", r"has no samples; put one sample per line"),
        ("ids.jsonl", "[1, 2]\n[99999]\n", r"ids.jsonl:2: input_ids value 99999 is outside \[0, \d+\)"),
        ("ids.jsonl", "not json\n", r"ids.jsonl:1 is not valid JSON"),
        # issue 27, failure 7: RecursionError and Python's 4300-digit ValueError were exit 4
        ("deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n", r"deep.jsonl:1 nests JSON deeper than 2 levels"),
        ("deep.jsonl", "[[[1]]]\n", r"deep.jsonl:1 nests JSON deeper than 2 levels"),
        ("big.jsonl", "[" + "9" * 5000 + "]\n", r"big.jsonl:1 holds an integer longer than 64 digits"),
        ("big.jsonl", "[1e999, 2]\n", r"big.jsonl:1: input_ids must be a non-empty list of integers"),
        ("nan.jsonl", "[NaN]\n", r"nan.jsonl:1: input_ids must be a non-empty list of integers"),
    ],
)
def test_an_unusable_calibration_file_is_refused_before_the_export(
    tiny_ckpt, tmp_path, capsys, monkeypatch, name, text, message
):
    import export.build as build_module

    def no_export(*a, **k):
        raise AssertionError("the export ran before the calibration file was checked")

    monkeypatch.setattr(build_module, "run_export_stage", no_export)
    calib = tmp_path / name
    calib.write_text(text)
    out = tmp_path / "out"
    code, lines = run_cli(
        ["--model", str(tiny_ckpt), "--out", str(out), *FAST, "--precision", "int8", "--calib", str(calib)], capsys
    )
    assert_clean_failure(code, lines, out, message)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--calib", "{dir}/ids.json"], r"a \.json file is neither form; write token ids .* to a \.jsonl file"),
        (["--calib-vocab", "{dir}/vocab.txt"], r"--calib-vocab tokenizes a text --calib file; pass --calib FILE too"),
    ],
)
def test_calibration_flags_that_would_be_misread_are_refused(tiny_ckpt, tmp_path, capsys, flags, message):
    (tmp_path / "ids.json").write_text("[1, 2, 3]\n")
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    out = tmp_path / "out"
    argv = ["--model", str(tiny_ckpt), "--out", str(out), "--precision", "int8"]
    code, lines = run_cli(argv + [f.format(dir=tmp_path) for f in flags], capsys)
    assert_clean_failure(code, lines, out, message)


def test_token_ids_in_a_jsonl_file_of_any_case(tiny_ckpt, tmp_path):
    calib = tmp_path / "IDS.JSONL"
    calib.write_text("[5, 6, 7]\n[8]\n")
    out = tmp_path / "out"
    flags = ["--precision", "int8", "--quant-fallback", "none", "--calib", str(calib), "--skip-validation"]
    assert build_tiny(tiny_ckpt, out, *flags) == 0
    calibration = report(out)["quantization"]["calibration"]
    assert calibration["tokenizer"] == "token ids (JSON lines)" and calibration["samples"] == 2


def test_pooled_int8_graph_keeps_the_pooled_outputs(tiny_ckpt, tmp_path):
    out = tmp_path / "pooled"
    assert (
        build_tiny(
            tiny_ckpt,
            out,
            "--precision",
            "int8",
            "--pooling",
            "mean",
            "--outputs",
            "sentence_embedding",
            "--quant-fallback",
            "none",
        )
        == 0
    )
    r = report(out)
    cases = {c["graph"]: set(c["outputs"]) for c in r["validation"]}
    assert r["passed"] and cases["rope-plugin.int8"] == {"sentence_embedding"}
    assert cases["onnx.int8-cpu"] == {"last_hidden_state"}  # the CPU twin comes from the unpooled export


def test_fallback_turns_a_failing_stress_graph_into_a_passing_one(tmp_path, capsys):
    """tiny-stress (outlier LayerNorm channels) under a scaled-error bound of 1 % on the int8 graph: quantized whole it
    fails validation (exit 1); the fallback keeps the MatMuls reading the outlier LayerNorm high and it passes, and
    the report says which and what they cost."""
    from tests.fixtures.checkpoints import write_demo

    ckpt = write_demo(tmp_path / "stress", tiny=True, outliers=True)
    strict = tmp_path / "strict.toml"
    strict.write_text('[int8."rope-plugin.int8"."*"]\nrtol = 0.01\n')
    common = [
        "--model",
        str(ckpt),
        "--exporter",
        "torchscript",
        "--max-len",
        "128",
        "--precision",
        "int8",
        "--thresholds",
        str(strict),
    ]
    assert build([*common, "--out", str(tmp_path / "none"), "--quant-fallback", "none"]) == 1
    failed = report(tmp_path / "none")
    assert not failed["passed"] and any(
        not c["passed"] for c in failed["validation"] if c["graph"] == "rope-plugin.int8"
    )
    capsys.readouterr()
    assert build([*common, "--out", str(tmp_path / "auto"), "--quant-fallback-budget", "0.5"]) == 0
    log = capsys.readouterr().err  # off a terminal (captured), every long step of the stage says itself in a line
    for step in (
        "calibration (ranges): batch of",
        "fallback: sensitivity sweep (2/2), B=1 S=128",
        "fallback: trying the",
    ):
        assert step in log, step
    fb = report(tmp_path / "auto")["quantization"]["fallback"]
    assert fb["passed"] and 0 < len(fb["kept"]) <= fb["budget"] and 0 < fb["high_flops_share"] < 0.5
    assert any(k["node"].endswith("layer.0/attention/self/query/MatMul") for k in fb["kept"]), fb["kept"]
    # the same data gives the same files with the fallback on too (its choice rests on PyTorch's reference outputs)
    assert build([*common, "--out", str(tmp_path / "auto2"), "--quant-fallback-budget", "0.5"]) == 0
    for f in ("model.rope-plugin.int8.onnx", "model.rope-plugin.int8.onnx.data"):
        assert sha256_file(tmp_path / "auto" / f) == sha256_file(tmp_path / "auto2" / f), f
    # a budget too small: the build fails validation, and the report says why the fallback could not help
    assert build([*common, "--out", str(tmp_path / "small"), "--quant-fallback-budget", "0.1"]) == 1
    small = report(tmp_path / "small")["quantization"]["fallback"]
    assert not small["passed"] and "(the budget) still fails" in small["reason"] and len(small["kept"]) == 1
