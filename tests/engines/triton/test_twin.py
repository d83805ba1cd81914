"""engines.triton publishes the INT8 CPU twin of an int8 build as `<name>_onnx` by default, the fp32 graph on request,
and refuses --onnx-twin int8 for a build without one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

try:  # any exception skips: a tritonclient installed without [grpc] raises RuntimeError, not ImportError
    from tritonclient.grpc import model_config_pb2  # noqa: F401
except Exception as e:
    pytest.skip(f"tritonclient[grpc] not usable (serving extra): {type(e).__name__}: {e}", allow_module_level=True)

from engines.triton import __main__ as cli  # noqa: E402
from engines.triton.twin import twin_keys  # noqa: E402
from export.report.schema import Report  # noqa: E402
from export.validate import Shape, make_inputs, ort_session  # noqa: E402
from tests.fixtures.tiny_build import write_tiny_build  # noqa: E402


@pytest.fixture(scope="module")
def int8_build(tmp_path_factory):
    build = tmp_path_factory.mktemp("q") / "tiny"
    model = write_tiny_build(build, 0, "--precision", "int8", "--quant-fallback", "none")
    return build, model


def ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def test_int8_twin_is_published_by_default_and_fp32_on_request(int8_build, tmp_path, capsys):
    build, _ = int8_build
    assert cli.main(["--build", str(build), "--out", str(tmp_path / "a"), "--name", "m"]) == 0
    published = tmp_path / "a" / "m_onnx" / "1" / "model.onnx"
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops(published)
    # the published file computes what the build validated: the twin's outputs, bit for bit
    feeds = make_inputs(Shape(2, 9, 1), 99, 2)
    got = ort_session(published).run(None, feeds)[0]
    assert np.array_equal(got, ort_session(build / "model.int8-cpu.onnx").run(None, feeds)[0])
    assert cli.main(["--build", str(build), "--out", str(tmp_path / "b"), "--name", "m", "--onnx-twin", "fp32"]) == 0
    assert not {"DynamicQuantizeLinear", "MatMulInteger"} & ops(tmp_path / "b" / "m_onnx" / "1" / "model.onnx")


def test_int8_twin_requested_from_a_build_without_one(tmp_path):
    report = Report(command=[], version="0", created="", artifacts={"onnx": "model.onnx"})
    assert twin_keys(report) == ("rope-onnx", "onnx")
    with pytest.raises(Exception, match="has no INT8 CPU twin"):
        twin_keys(report, "int8")
    report.artifacts["onnx.int8-cpu"] = "model.int8-cpu.onnx"
    assert twin_keys(report) == twin_keys(report, "int8") == ("rope-onnx.int8-cpu", "onnx.int8-cpu")
    assert twin_keys(report, "fp32") == ("rope-onnx", "onnx")
