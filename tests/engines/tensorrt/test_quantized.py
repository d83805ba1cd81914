"""engines.build --precision int8 | fp8 on a CPU: which graphs it accepts (never calibrating), and the FP8 rule on the
GPU's compute capability. TensorRT itself is not needed (nor faked) for any of this."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.build import check_quantized_precision
from engines.tensorrt.availability import engine_stage_status, fp8_problem
from engines.tensorrt.graph import quantized_format
from export.errors import UsageError
from tests.limits import SLOW_MACHINE_S


def qdq_graph(path, zero_types: list[int]):
    """x -> (Q -> DQ) per zero-point type -> y: a minimal Q/DQ graph."""
    nodes, inits, t = [], [numpy_helper.from_array(np.array(0.1, np.float32), "s")], "x"
    for i, zt in enumerate(zero_types):
        inits.append(helper.make_tensor(f"z{i}", zt, [], [0]))
        nodes += [
            helper.make_node("QuantizeLinear", [t, "s", f"z{i}"], [f"q{i}"]),
            helper.make_node("DequantizeLinear", [f"q{i}", "s", f"z{i}"], [f"d{i}"]),
        ]
        t = f"d{i}"
    nodes.append(helper.make_node("Identity", [t], ["y"]))
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        inits,
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    return path


def test_quantized_format_reads_the_zero_points(tmp_path):
    assert quantized_format(qdq_graph(tmp_path / "i.onnx", [TensorProto.INT8])) == "int8"
    assert quantized_format(qdq_graph(tmp_path / "f.onnx", [TensorProto.FLOAT8E4M3FN])) == "fp8"
    assert quantized_format(qdq_graph(tmp_path / "n.onnx", [])) is None
    with pytest.raises(ValueError, match="mixes Q/DQ types"):
        quantized_format(qdq_graph(tmp_path / "m.onnx", [TensorProto.INT8, TensorProto.FLOAT8E4M3FN]))


@pytest.mark.parametrize(
    "zeros,precision,pattern",
    [
        ([], "int8", "has no Q/DQ nodes; --precision int8 builds from the graph"),
        ([], "fp8", "engines.build never calibrates"),
        ([TensorProto.INT8], "fp16", "is quantized to int8; pass --precision int8"),
        ([TensorProto.INT8], "fp8", "is quantized to int8; pass --precision int8"),
        ([TensorProto.FLOAT8E4M3FN], "int8", "is quantized to fp8; pass --precision fp8"),
        ([TensorProto.INT8, TensorProto.FLOAT8E4M3FN], "int8", "mixes Q/DQ types"),
        ([TensorProto.UINT8], "int8", "zero points that are not int8 or float8e4m3fn initializers"),
    ],
)
def test_precision_must_match_the_graph(tmp_path, zeros, precision, pattern):
    with pytest.raises(UsageError, match=pattern):
        check_quantized_precision(qdq_graph(tmp_path / "g.onnx", zeros), precision)


@pytest.mark.parametrize(
    "zeros,precision", [([], "fp16"), ([TensorProto.INT8], "int8"), ([TensorProto.FLOAT8E4M3FN], "fp8")]
)
def test_matching_graphs_pass(tmp_path, zeros, precision):
    check_quantized_precision(qdq_graph(tmp_path / "g.onnx", zeros), precision)


@pytest.mark.parametrize(
    "name,cc,ok",
    [
        ("A100", "8.0", False),
        ("A10", "8.6", False),
        ("T4", "7.5", False),
        ("L4", "8.9", True),
        ("H100", "9.0", True),
        ("B200", "10.0", True),
    ],
)
def test_fp8_needs_compute_capability_8_9(name, cc, ok):
    problem = fp8_problem(name, cc)
    assert (problem is None) == ok
    if not ok:
        assert f"{name} is {cc}" in problem and ">= 8.9" in problem and "--precision int8" in problem


@pytest.mark.skipif(
    engine_stage_status()["status"] == "available",
    reason="TensorRT and a GPU are here: the build would run (tests/engines/tensorrt/test_build_gpu.py builds engines)",
)
def test_a_quantized_graph_passes_usage_and_stops_at_availability(tmp_path):
    """A real INT8 Q/DQ graph with --precision int8 is accepted (exit 3 here: no TensorRT), never calibrated."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "engines.build",
            str(qdq_graph(tmp_path / "g.onnx", [TensorProto.INT8])),
            "--precision",
            "int8",
            "--max-len",
            "16",
            "--profiles",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=SLOW_MACHINE_S,
    )
    assert r.returncode == 3 and r.stderr.strip().count("\n") == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx"]


@pytest.mark.parametrize(
    "precision, cc, available", [("fp8", "8.0", False), ("fp8", "9.0", True), ("int8", "8.0", True)]
)
def test_the_fp8_rule_is_part_of_the_engine_status(monkeypatch, precision, cc, available):
    """engine_status_for joins the FP8 rule to availability, so export.build can refuse before any work. Here the
    availability answer is given (this machine has no TensorRT): only our rule is under test."""
    import engines.tensorrt.availability as availability

    monkeypatch.setattr(availability, "engine_stage_status", lambda: {"status": "available", "tensorrt": "10.16"})
    monkeypatch.setattr(availability, "gpu_identity", lambda: ("GPU-X", cc))
    status = availability.engine_status_for(precision)
    assert (status["status"] == "available") == available
    if not available:
        assert "GPU-X is 8.0" in status["reason"]


def test_export_build_refuses_fp8_on_an_older_gpu_before_any_work(monkeypatch, tiny_ckpt, tmp_path, capsys):
    import engines.tensorrt.availability as availability
    import export.build as build_module

    monkeypatch.setattr(availability, "engine_stage_status", lambda: {"status": "available", "tensorrt": "10.16"})
    monkeypatch.setattr(availability, "gpu_identity", lambda: ("GPU-X", "8.6"))
    monkeypatch.setattr(build_module.Run, "load", lambda self: pytest.fail("the checkpoint was read"))
    out = tmp_path / "out"
    argv = ["--model", str(tiny_ckpt), "--out", str(out), "--precision", "fp8", "--require-engine"]
    assert build_module.main(argv) == 3
    err = capsys.readouterr().err
    assert "FP8 engines need compute capability >= 8.9" in err and "GPU-X is 8.6" in err
    assert not out.exists() or not any(out.iterdir())
