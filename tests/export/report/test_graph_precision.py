"""export.report.graph_precision and the verdict's file check (issue 27, failure 3): a graph is judged by what the
file is, never by its key. Small hand-made graphs of every kind (each passes onnx.checker), then every relabelling
of each to every other precision's key, then engines judged by their sidecar and graph. No build."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from export.errors import UsageError
from export.folder.digest import onnx_sha256, sha256_file
from export.report.graph_precision import graph_precision, precision_of
from export.report.schema import Report, key_precision
from export.report.thresholds import Thresholds
from export.report.verdict import KIND, judge, passed

X = helper.make_tensor_value_info("x", T.FLOAT, [2, 4])
Y = helper.make_tensor_value_info("y", T.FLOAT, [2, 4])
W = np.ones((4, 4), np.float32)


def _init(name: str, dtype: int, dims=(4, 4)) -> onnx.TensorProto:
    values = np.zeros(dims, helper.tensor_dtype_to_np_dtype(dtype))
    t = numpy_helper.from_array(values, name)
    if dtype in (T.BFLOAT16, T.FLOAT8E4M3FN):  # numpy has no such dtype: the raw bytes of zeros
        t = helper.make_tensor(
            name, dtype, list(dims), bytes(int(np.prod(dims)) * (2 if dtype == T.BFLOAT16 else 1)), True
        )
    return t


def _low(dtype: int, emulated: bool = False) -> tuple[list, list]:
    if emulated:  # an fp32 graph rounding through bf16, as the -emulated twin does
        nodes = [
            helper.make_node("Cast", ["x"], ["xl"], to=dtype),
            helper.make_node("Cast", ["xl"], ["xf"], to=T.FLOAT),
        ]
        return nodes + [helper.make_node("MatMul", ["xf", "w"], ["y"])], [numpy_helper.from_array(W, "w")]
    nodes = [
        helper.make_node("Cast", ["x"], ["xl"], to=dtype),
        helper.make_node("MatMul", ["xl", "w"], ["yl"]),
        helper.make_node("Cast", ["yl"], ["y"], to=T.FLOAT),
    ]
    return nodes, [_init("w", dtype)]


def _qdq(qtype: int) -> tuple[list, list]:
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    inits = [_init("wq", qtype), _init("z", qtype, ()), numpy_helper.from_array(np.float32(0.1), "s")]
    return nodes, inits


def _dynamic() -> tuple[list, list]:
    """ORT's quantize_dynamic, as the INT8 CPU twin: uint8 activations at run time, int8 weights."""
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("MatMulInteger", ["xq", "wq", "xz", "wz"], ["yi"]),
        helper.make_node("Cast", ["yi"], ["yf"], to=T.FLOAT),
        helper.make_node("Mul", ["yf", "xs"], ["y"]),
    ]
    return nodes, [_init("wq", T.INT8), _init("wz", T.INT8, ())]


KINDS = {  # variant -> (nodes, initializers), and what the file is
    "fp32": ((lambda: ([helper.make_node("MatMul", ["x", "w"], ["y"])], [numpy_helper.from_array(W, "w")])), "fp32"),
    "fp16": ((lambda: _low(T.FLOAT16)), "fp16"),
    "bf16": ((lambda: _low(T.BFLOAT16)), "bf16"),
    "bf16-emulated": ((lambda: _low(T.BFLOAT16, emulated=True)), "bf16"),
    "int8": ((lambda: _qdq(T.INT8)), "int8"),
    "int8-cpu": (_dynamic, "int8"),
    "fp8": ((lambda: _qdq(T.FLOAT8E4M3FN)), "fp8"),
}
KEYS = {"fp32": "onnx", **{v: f"onnx.{v}" for v in KINDS if v != "fp32"}}  # the artifact key of each variant


def model_of(variant: str) -> onnx.ModelProto:
    nodes, inits = KINDS[variant][0]()
    m = helper.make_model(
        helper.make_graph(nodes, variant, [X], [Y], inits), opset_imports=[helper.make_opsetid("", 21)]
    )
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("variant", KINDS)
def test_each_kind_of_graph_is_read_from_the_file(tmp_path, variant):
    path = tmp_path / "g.onnx"
    onnx.save(model_of(variant), str(path))
    assert graph_precision(path) == KINDS[variant][1]


def test_what_is_hidden_in_a_function_or_a_subgraph_counts():
    fp16 = model_of("fp16")
    body = helper.make_graph(list(fp16.graph.node), "then", [], [Y], list(fp16.graph.initializer))
    cond = helper.make_tensor_value_info("c", T.BOOL, [])
    if_node = helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=body)
    m = helper.make_model(helper.make_graph([if_node], "g", [X, cond], [Y]), opset_imports=fp16.opset_import)
    assert precision_of(m) == "fp16"
    f = helper.make_function(
        "local", "Low", ["x"], ["y"], list(model_of("bf16-emulated").graph.node)[:2], fp16.opset_import
    )
    call = helper.make_model(
        helper.make_graph([helper.make_node("Low", ["x"], ["y"], domain="local")], "g", [X], [Y]), functions=[f]
    )
    assert precision_of(call) == "bf16"


def test_a_quantization_of_another_type_is_named():
    m = model_of("int8")
    del m.graph.node[0].input[2]  # QuantizeLinear without a zero point: uint8 by the operator's definition
    m.graph.node[1].input[2] = ""
    m.graph.node[2].input[2] = "z"
    for t in m.graph.initializer:
        if t.name in ("wq", "z"):
            t.data_type = T.UINT8
    assert precision_of(m) == "quantized (uint8)"


@pytest.mark.parametrize("content", [b"not a graph \xff" * 10, b""])
def test_a_file_that_is_not_onnx_is_refused(tmp_path, content):
    (tmp_path / "g.onnx").write_bytes(content)
    with pytest.raises(ValueError):
        graph_precision(tmp_path / "g.onnx")
    report = report_about(tmp_path, "onnx", {"onnx": "g.onnx"})
    with pytest.raises(UsageError, match="g.onnx is not a usable ONNX graph"):
        judge(report, Thresholds.defaults(), tmp_path)


def report_about(folder: Path, key: str, files: dict[str, str], **sections) -> Report:
    stats = {"max_abs": 0.0, "scaled_error": 0.0, "cosine": 1.0, "row_cosine": 1.0, "n_nan": 0}
    case = {
        "graph": key,
        "precision": key_precision(key),
        "batch": 1,
        "seq": 4,
        "outputs": {"last_hidden_state": stats},
    }
    return Report(
        command=[],
        version="0",
        created="x",
        passed=True,
        artifacts=files,
        artifacts_sha256={rel: sha256_file(folder / rel) for rel in files.values()},
        validation=[case],
        **sections,
    )


def sections_for(label: str) -> dict:
    """What the report's own sections record for a build of `label`: set so that only the file can tell."""
    if label in ("fp16", "bf16"):
        return {"precision": {"precision": label}}
    if label in ("int8", "fp8"):
        return {"quantization": {"format": label, "structure_problems": []}}
    return {}


@pytest.mark.parametrize("variant", KINDS)
@pytest.mark.parametrize("key_variant", KINDS)
def test_every_relabelling_of_a_graph_fails_and_only_that(tmp_path, variant, key_variant):
    """The graph of `variant` listed under `key_variant`'s key, every section agreeing with the key: the verdict
    passes exactly when the file is of the key's precision."""
    onnx.save(model_of(variant), str(tmp_path / "g.onnx"))
    key = KEYS[key_variant]
    label = KINDS[key_variant][1]
    report = report_about(tmp_path, key, {key: "g.onnx"}, **sections_for(label))
    checks = judge(report, Thresholds.defaults(), tmp_path)
    kind = [c for c in checks if c.rule == KIND]
    assert len(kind) == 1
    same = KINDS[variant][1] == label
    assert passed(checks) is same and kind[0].passed is same, kind
    if not same:
        assert f"g.onnx is {KINDS[variant][1]}, not {label} as its key '{key}' says" in kind[0].message


def engine_folder(tmp_path: Path, graph: str, sidecar_precision: str, key: str = "engine-fp16", sha: str | None = None):
    onnx.save(model_of(graph), str(tmp_path / "model.rope-plugin.x.onnx"))
    (tmp_path / "model.fp16.plan").write_bytes(b"a plan TensorRT wrote")
    sidecar = {"precision": sidecar_precision, "onnx_sha256": sha or onnx_sha256(tmp_path / "model.rope-plugin.x.onnx")}
    (tmp_path / "model.fp16.plan.json").write_text(json.dumps(sidecar))
    files = {
        key: "model.fp16.plan",
        f"{key}.sidecar": "model.fp16.plan.json",
        "tensorrt-onnx": "model.rope-plugin.x.onnx",
    }
    label = key.removeprefix("engine-")
    return judge(
        report_about(tmp_path, key, files, engine={"status": "built", "engines": [{"precision": label}]}),
        Thresholds.defaults(),
        tmp_path,
    )


@pytest.mark.parametrize(
    "graph,sidecar,sha,why",
    [
        ("fp16", "fp16", None, None),
        ("fp32", "fp32", None, "is fp32, not fp16"),  # an fp32 engine relabelled engine-fp16
        ("fp32", "fp16", None, "its sidecar says 'fp16', but model.rope-plugin.x.onnx, its graph, is fp32"),
        ("fp16", "fp16", "0" * 64, "does not record the sha256 of model.rope-plugin.x.onnx"),
    ],
)
def test_an_engine_is_what_its_sidecar_and_graph_say(tmp_path, graph, sidecar, sha, why):
    checks = engine_folder(tmp_path, graph, sidecar, sha=sha)
    kind = [c for c in checks if c.rule == KIND and c.output == "engine-fp16"]
    assert len(kind) == 1 and kind[0].passed is (why is None), kind
    if why:
        assert why in kind[0].message and not passed(checks)
