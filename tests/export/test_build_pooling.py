"""export.build --pooling: sentence_embedding inside the TensorRT-bound graph, fp32, validated against PyTorch at
every shape like the other outputs; --outputs drops last_hidden_state; refused for heads where it means nothing;
the default build unchanged."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto

from engines.gate import main as gate
from export.build import main as build
from export.passes.pooling import EMBEDDING, HIDDEN, Pooling, declared_pooling
from export.spec import TASKS
from export.validate import validation_shapes
from tests.fixtures.tiny_build import build_args
from tests.helpers import one_line

MAX_LEN = 24  # the `pooled` fixture's --max-len


def report_of(out) -> dict:
    return json.loads((out / "report.json").read_text())


def declared(path) -> dict[str, tuple]:
    """{output: (elem type, shape)} of a graph file."""
    m = onnx.load(str(path), load_external_data=False)
    return {
        o.name: (o.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim])
        for o in m.graph.output
    }


def test_pooled_fp16_graph_is_validated_against_pytorch_at_every_shape(pooled, capsys):
    r = report_of(pooled)
    hidden = r["model"]["hidden"]
    assert r["passed"]
    assert gate([str(pooled / "report.json")]) == 0  # the gate re-checks the pooled output's statistics too
    capsys.readouterr()
    graded = {c["graph"]: sorted(c["outputs"]) for c in r["validation"]}
    assert graded == {"onnx": [HIDDEN], "rope-plugin": [HIDDEN, EMBEDDING], "rope-plugin.fp16": [HIDDEN, EMBEDDING]}
    want = {(s.batch, s.seq, s.padded_rows) for s in validation_shapes(MAX_LEN, "model")}
    for graph in ("rope-plugin", "rope-plugin.fp16"):
        cases = [c for c in r["validation"] if c["graph"] == graph]
        assert {(c["batch"], c["seq"], c["padded_rows"]) for c in cases} == want  # padded rows included
        assert all(c["outputs"][EMBEDDING]["passed"] for c in cases)
        print(graph, "sentence_embedding max_abs", max(c["outputs"][EMBEDDING]["max_abs"] for c in cases))
    # the file TensorRT builds from: sentence_embedding [batch, hidden] fp32 beside last_hidden_state
    trt = pooled / r["artifacts"]["tensorrt-onnx"]
    assert trt.name == "model.rope-plugin.fp16.onnx"
    assert declared(trt)[EMBEDDING] == (TensorProto.FLOAT, ["batch", hidden])
    assert declared_pooling(onnx.load(str(trt), load_external_data=False)) == Pooling("mean", normalize=True)
    assert list(declared(pooled / "model.onnx")) == [HIDDEN]  # the plain export is left as exported


def test_pooled_nodes_compute_in_fp32_in_the_fp16_graph(pooled):
    m = onnx.shape_inference.infer_shapes(
        onnx.load(str(pooled / "model.rope-plugin.fp16.onnx"), load_external_data=False)
    )
    types = {v.name: v.type.tensor_type.elem_type for v in list(m.graph.value_info) + list(m.graph.output)}
    pool_values = [o for n in m.graph.node if n.name.startswith("pool/") for o in n.output]
    assert pool_values and {types[v] for v in pool_values} == {TensorProto.FLOAT}
    assert any(types.get(v) == TensorProto.FLOAT16 for v in types)  # the rest of the graph did go low


def test_report_records_outputs_and_bytes_per_request(pooled):
    p = report_of(pooled)["pooling"]
    hidden = report_of(pooled)["model"]["hidden"]
    assert (p["mode"], p["normalize"], p["graph"], p["outputs"]) == (
        "mean",
        True,
        "model.rope-plugin.onnx",
        [HIDDEN, EMBEDDING],
    )
    assert p["engine_graph"] == "model.rope-plugin.fp16.onnx"
    assert p["engine_outputs"][EMBEDDING] == {"dtype": "float32", "shape": ["batch", hidden]}
    b = p["request_bytes"]
    fp32 = 4  # both outputs are declared float32 in the fp16 graph (the precision pass casts outputs back)
    assert (b["batch"], b["sequence"]) == (8, MAX_LEN)
    assert b[EMBEDDING] == 8 * hidden * fp32 and b[HIDDEN] == 8 * MAX_LEN * hidden * fp32
    assert b["saved"] == b[HIDDEN] - b[EMBEDDING]
    assert b["engine_outputs"] == {HIDDEN: b[HIDDEN], EMBEDDING: b[EMBEDDING]}
    assert "## Pooling" in (pooled / "report.md").read_text()


def test_outputs_sentence_embedding_drops_the_hidden_state(tiny_ckpt, tmp_path):
    out = tmp_path / "cls"
    assert (
        build(
            build_args(
                tiny_ckpt, out, "--rope", "none", "--pooling", "cls", "--outputs", "sentence_embedding", max_len=16
            )
        )
        == 0
    )
    r = report_of(out)
    assert r["passed"] and r["artifacts"]["tensorrt-onnx"] == "model.onnx"  # --rope none: the export gains it
    assert list(declared(out / "model.onnx")) == [EMBEDDING]
    assert {tuple(c["outputs"]) for c in r["validation"]} == {(EMBEDDING,)}
    assert r["pooling"]["request_bytes"]["engine_outputs"] == {EMBEDDING: 8 * r["model"]["hidden"] * 4}


def test_default_build_keeps_its_outputs(built):
    r = report_of(built)
    assert "pooling" not in r
    assert {tuple(c["outputs"]) for c in r["validation"]} == {(HIDDEN,)}
    assert all(list(declared(built / f)) == [HIDDEN] for f in ("model.onnx", "model.rope-plugin.onnx"))


@pytest.mark.parametrize("task", sorted(t for t in TASKS if t != "model"))
def test_pooling_refused_for_heads_without_hidden_states(make_ckpt, tmp_path, capsys, task):
    ckpt, _ = make_ckpt(task=task)
    out = tmp_path / "o"
    assert build(build_args(ckpt, out, "--pooling", "mean", max_len=16)) == 2
    line = one_line(capsys)
    assert f"a {task} checkpoint" in line and "drop --pooling" in line, line
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--normalize"], "--normalize applies"),
        (["--outputs", "sentence_embedding"], "--outputs applies to a pooled output"),
        (["--truncate-dim", "8"], "--truncate-dim applies to a pooled output"),
        (["--pooling", "mean", "--truncate-dim", "0"], "--truncate-dim 0 must be at least 1"),
        (["--pooling", "mean", "--outputs", "last_hidden_state"], "--outputs 'last_hidden_state'"),
    ],
)
def test_contradicting_pooling_flags_exit_2(tiny_ckpt, tmp_path, capsys, flags, fragment):
    out = tmp_path / "o"
    assert build(["--model", str(tiny_ckpt), "--out", str(out), *flags]) == 2
    assert fragment in one_line(capsys)
    assert not out.exists()


def test_grading_fails_an_output_the_graph_should_not_have():
    """--outputs sentence_embedding: a graph that kept last_hidden_state fails validation instead of passing."""
    import numpy as np

    from export.report.thresholds import Thresholds
    from export.validate import Shape, grade

    emb = np.ones((2, 4), np.float32)
    got = {EMBEDDING: emb, HIDDEN: np.ones((2, 3, 4), np.float32)}
    case = grade("rope-plugin", "fp32", Shape(2, 3), got, {EMBEDDING: emb}, Thresholds.defaults())
    assert not case["passed"] and case["outputs"][EMBEDDING]["passed"]
    assert "unexpected output 'last_hidden_state'" in case["outputs"][HIDDEN]["error"]
