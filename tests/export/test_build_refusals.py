"""Every user mistake of the reliability issue's corpus: exit 2 and one line naming the problem and the fix, with
nothing written; and what a user does by right (bf16 weights, an explicit --config) works and is reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engines.gate import main as gate
from export.build import main as build
from export.cli import entry as cli
from export.errors import UsageError
from tests.helpers import one_line
from tests.limits import SLOW_MACHINE_S, no_checkpoint_reading

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--exporter", "torchscript", "--max-len", "16"]


@pytest.fixture(scope="module")
def parts(tiny_ckpt):
    obj = torch.load(tiny_ckpt, weights_only=True)
    return obj["config"], obj["state_dict"]


def refused(capsys, argv: list[str], out: Path, *fragments: str) -> str:
    assert build([*argv, "--out", str(out)]) == 2
    line = one_line(capsys)
    assert line.startswith("error: ") and all(f in line for f in fragments), line
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")], list(out.iterdir())
    return line


def save(tmp_path, name, config, state) -> str:
    path = tmp_path / name
    torch.save({"config": config, "state_dict": state}, path)
    return str(path)


# ---- --config: used when given, refused when it cannot be right, never ignored --------------------------


def test_explicit_config_beats_the_checkpoints_own_and_the_report_says_so(tmp_path, capsys, parts):
    config, state = parts
    ckpt = save(tmp_path, "c.pt", config, state)
    (tmp_path / "cfg.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-5}))
    out = tmp_path / "o"
    assert build(["--model", ckpt, "--config", str(tmp_path / "cfg.json"), "--out", str(out), *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["checkpoint"]["config_source"] == f"--config {tmp_path / 'cfg.json'}"
    assert "Config: --config" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "config,fragment",
    [
        ("/nonexistent.json", "does not exist"),
        ("/dev/null", "character device"),
        ("/proc/self/environ", "not valid JSON"),
        ("conflicting", "num_hidden_layers is 5"),
    ],
)
def test_a_config_that_cannot_be_used_is_refused(tmp_path, capsys, parts, config, fragment):
    cfg, state = parts
    ckpt = save(tmp_path, "c.pt", cfg, state)
    if config == "conflicting":
        config = str(tmp_path / "cfg.json")
        Path(config).write_text(json.dumps({**cfg, "num_hidden_layers": 5}))
    refused(capsys, ["--model", ckpt, "--config", config, *FAST], tmp_path / "o", fragment)


# ---- checkpoints that are not what they claim --------------------------------------------------------


def test_garbage_after_a_pickle_header_is_refused(tmp_path, capsys):
    ckpt = tmp_path / "g.pt"
    ckpt.write_bytes(b"\x80\x04" + os.urandom(4096))
    refused(capsys, ["--model", str(ckpt), *FAST], tmp_path / "o", "not a")


def test_integer_weights_are_refused_naming_the_tensor(tmp_path, capsys, parts):
    config, state = parts
    key = "encoder.layer.0.attention.self.query.weight"
    bad = {**state, key: state[key].to(torch.int64)}
    refused(capsys, ["--model", save(tmp_path, "i.pt", config, bad), *FAST], tmp_path / "o", key, "int64")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights_load_upcast_and_say_so(tmp_path, parts, dtype):
    config, state = parts
    low = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    out = tmp_path / "o"
    assert build(["--model", save(tmp_path, "w.pt", config, low), "--out", str(out), *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    name = str(dtype).removeprefix("torch.")
    assert report["checkpoint"]["weights_dtype"] == f"{name} (upcast to float32 for the export)"
    assert f"Weights stored as {name}" in (out / "report.md").read_text()
    assert gate([str(out)]) == 0


@pytest.mark.parametrize(
    "field,value",
    [
        ("layer_norm_eps", float("nan")),
        ("layer_norm_eps", 0.0),
        ("hidden_dropout_prob", 2.0),
        ("initializer_range", float("inf")),
    ],
)
def test_a_real_config_field_out_of_range_is_refused(tmp_path, capsys, parts, field, value):
    config, state = parts
    refused(capsys, ["--model", save(tmp_path, "c.pt", {**config, field: value}, state), *FAST], tmp_path / "o", field)


# ---- memory and disk decided before they are spent --------------------------------------------------


def test_a_config_far_larger_than_its_weights_is_refused_at_once(tmp_path, capsys, parts, monkeypatch):
    """110 kB of weights with num_hidden_layers 10000 asked for 283 GB: refused before a model is described."""
    config, state = parts
    import export.checkpoint.rebuild as ck

    monkeypatch.setattr(ck, "_meta_model", lambda *a: pytest.fail("a model of the config's size was described"))
    ckpt = save(tmp_path, "c.pt", {**config, "num_hidden_layers": 10000}, state)
    refused(capsys, ["--model", ckpt, *FAST], tmp_path / "o", "num_hidden_layers is 10000", "hold 2")


def test_a_build_that_would_not_fit_in_memory_is_refused_with_both_numbers(tmp_path, capsys, tiny_ckpt, monkeypatch):
    import export.checkpoint.rebuild as ck

    monkeypatch.setattr(ck, "materialize", lambda *a, **k: pytest.fail("the model was built"))
    monkeypatch.setenv("ROFORMER_TRT_MEMORY_LIMIT", "2G")
    line = refused(
        capsys,
        ["--model", str(tiny_ckpt), "--max-len", "65536"],
        tmp_path / "o",
        "needs about",
        "only 2.1 GB is available (ROFORMER_TRT_MEMORY_LIMIT)",
    )
    assert "--max-len" in line
    refused(capsys, ["--model", str(tiny_ckpt), "--max-memory", "1M", *FAST], tmp_path / "o2", "(--max-memory)")


@pytest.mark.parametrize("value", ["9" * 400, "9" * 5000, "1e400G", "nan", "８G", "0"])
def test_a_memory_limit_that_is_not_a_size_is_one_line(tmp_path, capsys, tiny_ckpt, monkeypatch, value):
    """Issue 27, failure 8: a 400-digit --max-memory or ROFORMER_TRT_MEMORY_LIMIT was an OverflowError, exit 4."""
    import export.checkpoint.rebuild as ck

    monkeypatch.setattr(ck, "inspect_checkpoint", lambda *a, **k: pytest.fail("the checkpoint was read"))
    with pytest.raises(SystemExit) as e:  # argparse's refusal of the flag
        build(["--model", str(tiny_ckpt), "--max-memory", value, "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "argument --max-memory" in one_line(capsys)
    monkeypatch.setenv("ROFORMER_TRT_MEMORY_LIMIT", value)
    refused(capsys, ["--model", str(tiny_ckpt), *FAST], tmp_path / "o", "ROFORMER_TRT_MEMORY_LIMIT")


def _tmpfs(tmp_path, size: str) -> Path:
    mount = tmp_path / "small"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill a disk ({r.stderr.decode().strip()[:80]})")
    return mount


@pytest.mark.parametrize("precheck", [True, False])
def test_a_full_disk_is_named_with_the_space_needed(tmp_path, capsys, tiny_ckpt, monkeypatch, precheck):
    mount = _tmpfs(tmp_path, "200k")
    try:
        if not precheck:  # the disk fills up during the build (another writer): Errno 28 mid-way
            import export.folder.disk

            monkeypatch.setattr(export.folder.disk, "require", lambda *a: None)
        line = refused(
            capsys, ["--model", str(tiny_ckpt), *FAST], mount / "o", "free" if precheck else "no space left", "GB"
        )
        assert "another disk" in line and not (mount / "o").exists()
    finally:
        subprocess.run(["umount", str(mount)])


# ---- --out and names, before any work --------------------------------------------------------------


@pytest.mark.parametrize("what", ["file", "long", "collision"])
def test_out_problems_are_refused_before_the_checkpoint_is_read(tmp_path, capsys, tiny_ckpt, monkeypatch, what):
    no_checkpoint_reading(monkeypatch)
    out = {"file": tmp_path / "f", "long": tmp_path / ("n" * 300), "collision": tmp_path / "c"}[what]
    if what == "file":
        out.write_text("x")
    if what == "collision":
        out.mkdir()
        (out / "report.md").write_text("my notes")
    assert build(["--model", str(tiny_ckpt), "--out", str(out), *FAST]) == 2
    line = one_line(capsys)
    assert {"file": "is a file", "long": "255", "collision": "'report.md'"}[what] in line, line


def test_a_nul_byte_in_an_artifact_name_is_a_malformed_report(copy, capsys):
    out, doctor = copy
    assert gate([doctor(lambda r: r["artifacts"].update(onnx="model\x00.onnx"))]) == 2
    assert "not a path inside the build folder" in one_line(capsys)


def test_triton_refuses_a_huge_max_batch_and_an_existing_model_folder_before_any_work(
    built, tmp_path, capsys, monkeypatch
):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    from engines.triton import __main__ as triton
    from engines.triton import repository

    monkeypatch.setattr(repository, "read_build", lambda *a, **k: pytest.fail("the build was judged first"))
    assert triton.main(["--build", str(built), "--out", str(tmp_path / "r"), "--max-batch", "99999999999"]) == 2
    assert "int32" in one_line(capsys)
    (tmp_path / "r2" / "tiny_onnx").mkdir(parents=True)
    assert triton.main(["--build", str(built), "--out", str(tmp_path / "r2")]) == 2
    assert "tiny_onnx" in one_line(capsys)


# ---- what reaches the terminal ------------------------------------------------------------------------


def test_library_warnings_and_colour_codes_stay_behind_debug(capsys):
    import warnings

    def noisy(args):
        warnings.warn("a library's UserWarning", UserWarning, stacklevel=1)
        raise UsageError("\x1b[31mthe problem\x1b[0m; the fix")

    for debug in (False, True):
        parser = cli.Parser(prog="t")
        with warnings.catch_warnings(record=True) as shown:  # what would reach the terminal
            warnings.simplefilter("always")
            assert cli.run(parser, noisy, ["--debug"] if debug else []) == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == "error: the problem; the fix", err
        assert [str(w.message) for w in shown] == (["a library's UserWarning"] if debug else [])
        assert debug or err == "error: the problem; the fix\n"


def test_ctrl_c_while_importing_is_one_line_and_130(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "export.build", "--model", "x.pt"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    time.sleep(0.4)  # inside the imports (torch alone takes seconds), after the interpreter started
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=SLOW_MACHINE_S)
    assert proc.returncode == 130 and err.strip().splitlines() == [err.strip().splitlines()[-1]], err
    assert err.startswith("interrupted:") and "Traceback" not in err
