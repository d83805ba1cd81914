"""python -m export.diagnose is as strict as the build (issue 27, failure 9): graphs go through the one checked
loader, numbers through export.inputs.numbers, output paths are checked before any work and never name an input, and the
build's INT8 CPU twin is diagnosed. Every refusal is one line, exit 2, before ONNX Runtime or PyTorch runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

import export.diagnose.__main__ as cli_module
from export.diagnose.__main__ import main as diagnose
from export.folder.digest import sha256_file
from export.passes.quantize.cpu_twin import write_cpu_twin
from tests.fixtures.hostile_graphs import edited, set_external, small_graph
from tests.helpers import one_line


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if a diagnosis starts: every refusal here comes before the work."""

    def started(*a, **k):
        raise AssertionError("the diagnosis ran before the refusal")

    monkeypatch.setattr(cli_module, "diagnose", started)
    monkeypatch.setattr(cli_module, "diagnose_model", started)


def refused(capsys, argv, text: str) -> None:
    try:
        code = diagnose([str(a) for a in argv])
    except SystemExit as e:  # argparse's own refusals (export.cli.entry.Parser.error) exit from parse_args
        code = e.code
    assert code == 2
    assert text in one_line(capsys)


@pytest.fixture
def copy(built, tmp_path) -> Path:
    """The tiny build's plain export and its data, copied into a folder of the test's own."""
    for f in ("model.onnx", "model.onnx.data"):
        shutil.copyfile(built / f, tmp_path / f)
    return tmp_path / "model.onnx"


@pytest.mark.parametrize(
    "make, text",
    [
        (lambda d: _write(d / "notes.onnx", b"a text file, not a graph\n" * 8), "is not an ONNX file"),
        (lambda d: _truncated(small_graph(d)), "is not an ONNX file"),
    ],
    ids=["text-file", "truncated-onnx"],
)
def test_files_that_are_not_graphs(built, tmp_path, capsys, no_work, make, text):
    refused(capsys, [built / "model.onnx", make(tmp_path)], text)


def test_a_checkpoint_given_as_a_graph(built, tiny_ckpt, capsys, no_work):
    refused(capsys, [built / "model.onnx", tiny_ckpt], "is not an ONNX file")


@pytest.mark.parametrize(
    "key, value, text",
    [
        ("location", "../../../../etc/passwd", "external data at '../../../../etc/passwd'"),
        ("location", "/etc/passwd", "external data at '/etc/passwd'"),
        ("location", "missing.data", "missing.data of tensor 'table' does not exist"),
        ("offset", "1000000000000000", "reads bytes 1000000000000000"),
    ],
    ids=["etc-passwd", "absolute", "missing-file", "offset-1e15"],
)
def test_external_data_is_checked_before_ort_reads_it(built, tmp_path, capsys, no_work, key, value, text):
    refused(capsys, [built / "model.onnx", edited(small_graph(tmp_path), set_external(key, value))], text)


def test_an_input_dim_fixed_at_10_to_the_12(built, tmp_path, capsys, no_work):
    def change(m):
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 10**12

    refused(capsys, [built / "model.onnx", edited(small_graph(tmp_path), change)], "has a dimension of 1000000000000")


def test_opset_99(built, tmp_path, capsys, no_work):
    def change(m):
        m.opset_import[0].version = 99

    refused(capsys, [built / "model.onnx", edited(small_graph(tmp_path), change)], "imports opset 99")


def test_a_fixed_dim_the_feeds_do_not_have(copy, capsys, no_work):
    """The class of the 10^12 probe inside the bounds: a graph fixing batch at 4 is refused, not ORT's error."""

    def change(m):
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4

    refused(capsys, [copy, edited(copy, change)], "fixes axis 0 at 4, the diagnosis feeds 2")


@pytest.mark.parametrize(
    "flag, value, text",
    [
        ("--batch", "0", "argument --batch: '0' is out of range"),
        ("--seq", "0", "argument --seq: '0' is out of range"),
        ("--batch", "1000000000", "argument --batch: '1000000000' is out of range"),
        ("--seq", "1000000000", "argument --seq: '1000000000' is out of range"),
        ("--time-cap", "nan", "argument --time-cap: 'nan' is not a finite number"),
        ("--time-cap", "inf", "argument --time-cap: 'inf' is not a finite number"),
        ("--time-cap", "0", "argument --time-cap: '0' is out of range"),
        ("--budget-mib", "9" * 400, "argument --budget-mib: '999999999999'...(400 characters) is too long"),
        ("--batch", "²", "argument --batch: '²' is not an integer"),
    ],
)
def test_numbers_are_refused_before_work(built, capsys, no_work, flag, value, text):
    refused(capsys, [built / "model.onnx", built / "model.rope-plugin.onnx", flag, value], text)


def test_seq_past_the_graphs_max_len(built, capsys, no_work):
    refused(capsys, [built / "model.onnx", built / "model.rope-plugin.onnx", "--seq", "25"], "longer than")
    refused(capsys, ["--build", built, "--seq", "25"], "longer than the build's max_len 24")
    refused(capsys, ["--build", built, "--batch", "0"], "argument --batch: '0' is out of range")


def test_too_many_tokens_for_a_graph_that_declares_no_max_len(tmp_path, capsys, no_work):
    g = small_graph(tmp_path)  # declares no max_len: only the token bound stands between --seq and the memory
    refused(capsys, [g, g, "--batch", "256", "--seq", "100000"], "25600000 tokens, more than the 65536")


def test_output_paths_are_checked_before_the_run(built, tmp_path, capsys, no_work):
    pair = [built / "model.onnx", built / "model.rope-plugin.onnx"]
    refused(capsys, [*pair, "--json", "/proc/x.json"], "--json /proc/x.json cannot be written in /proc")
    (tmp_path / "file").write_text("x")
    refused(capsys, [*pair, "--png", tmp_path / "file" / "d.png"], "is not a folder")
    refused(capsys, [*pair, "--md", tmp_path], "is a folder")
    refused(capsys, [*pair, "--json", tmp_path / "d", "--md", tmp_path / "d"], "--json and --md name the same file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no probe left behind


def test_an_input_is_never_written_over(copy, built, tmp_path, capsys, no_work):
    before = {p: p.read_bytes() for p in (copy, copy.with_name("model.onnx.data"))}
    refused(capsys, [copy, copy, "--json", copy], f"--json {copy} is {copy}, an input of this run")
    (tmp_path / "link.json").symlink_to(copy.with_name("model.onnx.data"))
    refused(capsys, [copy, copy, "--md", tmp_path / "link.json"], "an input of this run")
    assert all(p.read_bytes() == data for p, data in before.items())
    report = built / "report.json"
    text = report.read_text()
    refused(capsys, ["--build", built, "--png", report], "an input of this run")
    refused(capsys, ["--build", built, "--json", built / "model.onnx.data"], "an input of this run")
    refused(capsys, [built / "model.onnx", built / "model.onnx", "--md", built / "report.md"], "an input of this run")
    assert report.read_text() == text


def test_the_build_graph_must_pass_the_checked_loader(built, tmp_path, capsys, no_work):
    """--build reads its graph through export.folder.artifacts, which uses the same loader."""
    b = tmp_path / "b"
    shutil.copytree(built, b)
    edited(b / "model.rope-plugin.onnx", set_external("location", "../../../../etc/passwd"))
    r = json.loads((b / "report.json").read_text())
    r["artifacts_sha256"]["model.rope-plugin.onnx"] = sha256_file(b / "model.rope-plugin.onnx")
    (b / "report.json").write_text(json.dumps(r))
    refused(capsys, ["--build", b, "--graph", "rope-plugin"], "external data at '../../../../etc/passwd'")


@pytest.fixture(scope="module")
def fused_twin(exported, tmp_path_factory):
    """A dynamo export and ONNX Runtime's INT8 CPU twin of it (export.passes.quantize.cpu_twin, as export.build
    writes it): its embeddings fuse into EmbedLayerNormalization, so no Gather shows the vocab table."""
    path, _, config = exported("dynamo", 18)
    folder = tmp_path_factory.mktemp("twin")
    for f in ("model.onnx", "model.onnx.data"):
        shutil.copyfile(path.with_name(f), folder / f)
    twin = write_cpu_twin(
        folder / "model.onnx", folder / "model.int8-cpu.onnx", config.num_attention_heads, config.hidden_size
    )
    ops = {n.op_type for n in onnx.load(str(twin), load_external_data=False).graph.node}
    assert {"EmbedLayerNormalization", "MatMulInteger"} <= ops, ops
    return folder / "model.onnx", twin


def test_the_int8_cpu_twin_against_its_source(fused_twin, tmp_path, capsys):
    ref, twin = fused_twin
    assert diagnose([str(ref), str(twin), "--json", str(tmp_path / "d.json")]) == 0, capsys.readouterr()
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["precision"] == "int8" and d["first_divergence"] is None
    found = {p["stage"] for p in d["points"]}
    assert {"embeddings", "attention_input", "ffn_output", "layer_output"} <= found, found


def test_the_int8_cpu_twin_of_a_build_against_pytorch(int8_built, tmp_path, capsys):
    """Its projections are integer MatMuls: attention_input is their dequantized product, not the int32
    accumulator (which diverged by a scaled error of 8e4 and named the twin's first layer as broken)."""
    out = tmp_path / "d.json"
    assert diagnose(["--build", str(int8_built), "--graph", "onnx.int8-cpu", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["first_divergence"] is None and d["precision"] == "int8"
    projections = [p for p in d["points"] if p["stage"] == "attention_input"]
    assert projections and all(p["scaled_error"] < d["thresholds"]["rtol"] for p in projections)


def test_the_vocab_size_from_the_report_when_no_graph_shows_it(built, tmp_path, capsys):
    """A graph whose table is not an initializer read by a Gather: its build's report.json says the vocab size,
    once the graph is checked to be the one the report hashed."""
    b = tmp_path / "b"
    shutil.copytree(built, b)

    def hide(m):  # the embedding table reaches its Gather through an Identity
        gather = next(n for n in m.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids")
        m.graph.node.insert(0, onnx.helper.make_node("Identity", [gather.input[0]], ["hidden_table"]))
        gather.input[0] = "hidden_table"

    graph = edited(b / "model.onnx", hide)
    refused(capsys, [graph, graph], "changed since the build")  # the report hashed the graph before the edit
    r = json.loads((b / "report.json").read_text())
    r["artifacts_sha256"]["model.onnx"] = sha256_file(graph)
    (b / "report.json").write_text(json.dumps(r))
    assert diagnose([str(graph), str(graph)]) == 0
    assert "No divergence" in capsys.readouterr().out
    (b / "report.json").unlink()
    refused(capsys, [graph, graph], "no report.json is beside it")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
