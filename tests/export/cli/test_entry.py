"""Every bad input: exit 2, one line on stderr naming problem and fix, no traceback, no files left."""

import json
import os
import subprocess
import sys

import pytest
import torch

from export.build import main
from tests.fixtures.checkpoints import make_model, tiny_config
from tests.fixtures.tiny_build import build_args
from tests.limits import SLOW_MACHINE_S


def run_cli(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # a flag argparse refuses (export.inputs.numbers' types): its one line, exit 2
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in err if line.strip()]


def assert_clean_failure(code, lines, out, pattern):
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in lines[0]
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def bert_checkpoint(path):
    cfg = tiny_config().to_dict()
    cfg["model_type"] = "bert"
    torch.save({"config": cfg, "state_dict": {"embeddings.word_embeddings.weight": torch.zeros(2, 2)}}, path)


def wrong_keys_checkpoint(path):
    model = make_model(tiny_config(), "model")
    sd = {k.replace("query", "q_proj"): v for k, v in model.state_dict().items()}
    torch.save({"config": model.config.to_dict(), "state_dict": sd}, path)


def truncated_checkpoint(path, source):
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "case,pattern",
    [
        ("missing", r"does not exist.*--model"),
        ("empty", r"is empty.*re-save"),
        ("truncated", r"not a readable PyTorch checkpoint.*truncated"),
        ("garbage", r"not a readable PyTorch checkpoint"),
        (
            "bert",
            r"model_type='bert', which roformer-trt does not support \(supported: [a-z0-9_, ]*modernbert[a-z0-9_, ]*\)",
        ),
        ("wrong_keys", r"missing .* keys.*unexpected .* keys"),
        ("list", r"not a state_dict"),
    ],
)
def test_bad_checkpoint(tmp_path, capsys, tiny_ckpt, case, pattern):
    ckpt = tmp_path / "in" / "ckpt.pt"
    ckpt.parent.mkdir()
    if case == "empty":
        ckpt.write_bytes(b"")
    elif case == "truncated":
        truncated_checkpoint(ckpt, tiny_ckpt)
    elif case == "garbage":
        ckpt.write_bytes(os.urandom(4096))
    elif case == "bert":
        bert_checkpoint(ckpt)
    elif case == "wrong_keys":
        wrong_keys_checkpoint(ckpt)
    elif case == "list":
        torch.save([1, 2, 3], ckpt)
    out = tmp_path / "out"
    code, lines = run_cli(["--model", str(ckpt), "--out", str(out)], capsys)
    assert_clean_failure(code, lines, out, pattern)


@pytest.mark.parametrize(
    "extra,pattern",
    [
        (["--max-len", "0"], r"--max-len 0 is below 2"),
        (["--max-len", "-5"], r"--max-len -5 is below 2"),
        (["--max-len", "1"], r"--max-len 1 is below 2.*--max-len 2 or more"),
        (["--max-len", "10000000"], r"beyond the supported"),
        (["--exporter", "dynamo", "--opset", "17"], r"opset 17 is refused.*invalid Split"),
        (["--exporter", "torchscript", "--opset", "23"], r"--opset 23 is not supported by the torchscript"),
        (["--thresholds", "/nonexistent.toml"], r"thresholds file .* does not exist"),
        (["--precision", "int4"], r"--precision 'int4' is not supported; use one of fp32, fp16, bf16, int8, fp8"),
        (["--calib-method", "max"], r"--calib-method applies to --precision int8 or fp8"),
        (["--precision", "fp8", "--calib-method", "entropy"], r"entropy models INT8's 128 uniform levels"),
        (
            ["--precision", "int8", "--calib-method", "kl"],
            r"--calib-method 'kl' is not one of max, entropy, percentile",
        ),
        (["--precision", "int8", "--rope", "none"], r"--precision int8 places Q/DQ around the fused rotary nodes"),
        (["--precision", "int8", "--quant-fallback-budget", "2"], r"--quant-fallback-budget must be a fraction"),
        (["--precision", "int8", "--calib", "/nonexistent.txt"], r"--calib /nonexistent.txt is not a file"),
        (["--precision", "int8", "--calib-size", "0"], r"--calib-size must be from 1"),
        (
            ["--precision", "fp8", "--calib", __file__, "--calib-vocab", "/nonexistent/vocab.txt"],
            r"--calib-vocab .* is not a file",
        ),
        (["--precision", "fp8", "--calib-vocab", "/nonexistent/vocab.txt"], r"--calib-vocab tokenizes a text --calib"),
        (["--batch", "8,1,4"], r"--batch '8,1,4': needs min <= opt <= max"),
        (["--batch", "1,x"], r"--batch '1,x': expected comma-separated integers"),
        (["--max-len", "1024", "--profiles", "512,128"], r"bucket tops must be strictly ascending"),
        (["--max-len", "256", "--profiles", "128,512"], r"top 512 exceeds --max-len 256.*raise --max-len"),
        (["--choices", "4"], r"--choices applies to multiple-choice checkpoints only"),
        (["--workspace-mib", "0"], r"--workspace-mib must be from 1"),
        (["--batch", "99999999999"], r"<= 2147483647"),
        (["--max-memory", "lots"], r"argument --max-memory: 'lots' is not a memory size"),
        (["--max-memory", "9" * 400], r"argument --max-memory: '999999999999'...\(400 characters\) is too long"),
        (["--max-len", "²"], r"argument --max-len: '²' is not an integer"),
        (["--max-len", "١٢"], r"argument --max-len: '١٢' is not an integer"),  # int() reads it as 12
        (["--opset", "9" * 5000], r"argument --opset: .* is too long"),
        (["--atol", "nan"], r"argument --atol: 'nan' is not a finite number"),
        (["--rtol", "1e999"], r"argument --rtol: '1e999' is too large"),
        (["--precision", "int8", "--calib-size", "1_000"], r"argument --calib-size: '1_000' is not an integer"),
        (["--precision", "int8", "--quant-fallback-budget", "inf"], r"argument --quant-fallback-budget: 'inf'"),
        (["--workspace-mib", "２"], r"argument --workspace-mib: '２' is not an integer"),
        (["--bench", "--bench-grid", "1x١٢٨"], r"--bench-grid '1x١٢٨': expected BATCHxSEQ"),
        (["--batch", "1,²"], r"--batch '1,²': expected comma-separated integers"),
        (["--bench-grid", "1x8"], r"--bench-grid applies with --bench"),
        (["--bench", "--bench-grid", "8by128"], r"--bench-grid '8by128': expected BATCHxSEQ"),
        (["--bench", "--max-len", "64", "--bench-grid", "1x128"], r"sequence length 128 is outside 1..64"),
        (["--bench", "--batch", "4", "--bench-grid", "16x32"], r"batch 16 is outside the engine's batch range 1..4"),
    ],
)
def test_bad_options(tmp_path, capsys, tiny_ckpt, extra, pattern):
    out = tmp_path / "out"
    code, lines = run_cli(["--model", str(tiny_ckpt), "--out", str(out), *extra], capsys)
    assert_clean_failure(code, lines, out, pattern)


def test_unwritable_out(tmp_path, capsys, tiny_ckpt):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "sub"  # a folder below a regular file cannot be created, even as root
    code, lines = run_cli(["--model", str(tiny_ckpt), "--out", str(out)], capsys)
    assert_clean_failure(code, lines, out, r"--out .* cannot be made: .* is a file")


def test_pickle_refused_names_the_flag(tmp_path, capsys):
    torch.save(make_model(tiny_config(), "model"), tmp_path / "m.pt")
    out = tmp_path / "out"
    code, lines = run_cli(["--model", str(tmp_path / "m.pt"), "--out", str(out)], capsys)
    assert_clean_failure(code, lines, out, r"--trust-pickle")


def test_module_entry_point_exit_code(tmp_path):
    """The real `python -m export.build` process: exit code and one stderr line."""
    r = subprocess.run(
        [sys.executable, "-m", "export.build", "--model", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=SLOW_MACHINE_S,
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
    assert not (tmp_path / "o").exists()


def test_json_report_flag(tmp_path, capsys, tiny_ckpt):
    code = main(build_args(tiny_ckpt, tmp_path / "o", "--json", max_len=32))
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["passed"] and report["artifacts"]["rope-plugin"] == "model.rope-plugin.onnx"


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_the_shortest_max_len_builds_and_passes(tmp_path, capsys, tiny_ckpt, exporter):
    """MIN_MAX_LEN is measured, not guessed: at --max-len 2 both exporters export, rewrite and validate."""
    from engines.gate import main as gate
    from export.onnx_export import MIN_MAX_LEN

    out = tmp_path / "o"
    assert (
        main(["--model", str(tiny_ckpt), "--out", str(out), "--max-len", str(MIN_MAX_LEN), "--exporter", exporter]) == 0
    )
    assert gate([str(out)]) == 0


CLIS = [
    "export.build",
    "engines.gate",
    "engines.triton.__main__",
    "engines.build",
    "engines.serving.__main__",
    "engines.client",
    "plugins.build",
    "engines.bench",
]


@pytest.mark.parametrize("module", CLIS)
def test_every_cli_takes_debug_and_says_usage_errors_in_one_line(module, capsys):
    """Every `python -m` entry point goes through export.cli.entry: --debug exists, a bad flag is one line, exit 2."""
    import importlib

    mod = importlib.import_module(module)
    assert "--debug" in mod.build_parser().format_help()
    with pytest.raises(SystemExit) as e:
        mod.main(["--no-such-flag"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
