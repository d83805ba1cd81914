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
