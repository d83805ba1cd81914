"""python -m export.diagnose: both modes, its files and its refusals (one line, exit 2)."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from export.diagnose.__main__ import main as diagnose
from export.onnx_io import write_model
from tests.fixtures import faults
from tests.fixtures.checkpoints import write_demo
from tests.helpers import one_line


@pytest.fixture(scope="module")
def pair(built, tmp_path_factory):
    """The tiny build's plain export and a copy with layer 0's query projection perturbed."""
    bad = tmp_path_factory.mktemp("bad") / "bad.onnx"
    write_model(faults.perturb_weight(onnx.load(str(built / "model.onnx")), 0, "query"), bad, external=True)
    return built / "model.onnx", bad


def test_two_graphs_that_agree(built, tmp_path, capsys):
    files = {k: tmp_path / f"d.{k}" for k in ("json", "md", "png")}
    code = diagnose(
        [
            str(built / "model.onnx"),
            str(built / "model.rope-plugin.onnx"),
            *[x for k, p in files.items() for x in (f"--{k}", str(p))],
        ]
    )
    assert code == 0 and "No divergence" in capsys.readouterr().out
    d = json.loads(files["json"].read_text())
    assert d["first_divergence"] is None and d["precision"] == "fp32" and d["batch"] == 2 and d["padded_rows"] == 1
    assert files["png"].read_bytes()[:4] == b"\x89PNG" and "| 0 |  | embeddings |" in files["md"].read_text()


def test_a_divergent_pair_exits_1_naming_layer_and_node(pair, tmp_path, capsys):
    ref, bad = pair
    assert diagnose([str(ref), str(bad), "--json", str(tmp_path / "d.json"), "--batch", "1", "--seq", "7"]) == 1
    out = capsys.readouterr().out
    first = json.loads((tmp_path / "d.json").read_text())["first_divergence"]
    assert first["stage"] == "layer" and first["layer"] == 0 and isinstance(first["layer"], int)
    assert first["point"] == "attention_input" and first["nodes"][0] in out and "layer 0" in out


def test_build_mode_against_pytorch(built, capsys):
    assert diagnose(["--build", str(built), "--graph", "rope-plugin"]) == 0
    assert "No divergence" in capsys.readouterr().out


def test_another_checkpoint_is_refused_by_its_sha256(built, tmp_path, capsys):
    other = write_demo(tmp_path / "other", tiny=True, outliers=True)
    assert diagnose(["--build", str(built), "--model", str(other)]) == 2
    line = one_line(capsys)
    assert "sha256" in line and "not the checkpoint of this build" in line


def test_the_recorded_checkpoint_moved_away_needs_model(built, tmp_path, capsys):
    copy = tmp_path / "b"
    shutil.copytree(built, copy)
    r = json.loads((copy / "report.json").read_text())
    for recorded in (str(tmp_path / "gone.pt"), ""):  # "" must not become ".", the working directory
        r["checkpoint"]["path"] = recorded
        (copy / "report.json").write_text(json.dumps(r))
        assert diagnose(["--build", str(copy)]) == 2
        assert "pass --model" in one_line(capsys)


@pytest.mark.parametrize(
    "argv,text",
    [
        ([], "pass two graphs"),
        (["a.onnx"], "pass two graphs"),
        (["a.onnx", "b.onnx", "--build", "x"], "not both"),
        (["a.onnx", "b.onnx", "--graph", "onnx"], "go with --build"),
        (["--build", "{built}", "--graph", "engine-fp16"], "TensorRT engine"),
        (["--build", "{built}", "--graph", "nope"], "not an ONNX graph"),
        (["--build", "{built}", "--seq", "999"], "max_len"),
        (["{built}/model.onnx", "{built}/missing.onnx"], "missing.onnx"),
        (["{built}/model.onnx", "{built}/model.onnx", "--seq", "999"], "max_len"),
        (["{built}/model.onnx", "{built}/model.onnx", "--json", "{built}"], "is a folder"),
        (["--build", "{built}/nope"], "not a directory"),
    ],
)
def test_bad_input_is_one_line_exit_2(built, capsys, argv, text):
    assert diagnose([a.format(built=built) for a in argv]) == 2
    assert text in one_line(capsys)
