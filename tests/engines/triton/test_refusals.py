"""engines.triton on doctored builds: only a build the verdict passes is published, only the files its report
describes, only under --out, and a model name is a name."""

from __future__ import annotations

import pytest

from engines.triton import __main__ as triton
from export.report.schema import REPORT_JSON
from tests.helpers import one_line

pytestmark = pytest.mark.skipif(
    __import__("importlib").util.find_spec("tritonclient") is None,
    reason="tritonclient[grpc] not installed (the dev extra)",
)


@pytest.mark.parametrize("name", ["../../x", "/abs", "a/b", "..", ""])
def test_triton_name_must_be_a_model_name(built, tmp_path, capsys, name):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    assert triton.main(["--build", str(built), "--out", str(tmp_path / "repo"), "--name", name]) == 2
    assert "not a valid Triton model name" in one_line(capsys)
    assert not (tmp_path / "x").exists() and not (tmp_path / "repo").exists()


def test_triton_refuses_a_failed_build_and_replaced_files(copy, tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    out, doctor = copy
    doctor(lambda r: r.update(passed=False))
    assert triton.main(["--build", str(out), "--out", str(tmp_path / "r1")]) == 1
    assert "does not pass the verdict" in one_line(capsys)
    doctor(lambda r: r.update(passed=True))
    (out / "model.onnx").write_bytes(b"garbage, not the exported graph")
    assert triton.main(["--build", str(out), "--out", str(tmp_path / "r2")]) == 1  # the verdict, as the gate
    assert "changed since the build" in one_line(capsys)


def test_triton_garbage_onnx_with_matching_hash_exits_2(copy, tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    out, doctor = copy
    (out / "model.onnx").write_bytes(b"garbage")
    import hashlib

    digest = hashlib.sha256(b"garbage").hexdigest()
    doctor(lambda r: r["artifacts_sha256"].update({"model.onnx": digest}))
    assert triton.main(["--build", str(out), "--out", str(tmp_path / "r")]) == 2
    assert "not a usable ONNX graph" in one_line(capsys)


@pytest.mark.parametrize("bad_out", ["file", "/proc/roformer-trt-test"])
def test_triton_unwritable_out_exits_2(built, tmp_path, capsys, bad_out):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    target = tmp_path / "f" if bad_out == "file" else bad_out
    if bad_out == "file":
        target.write_text("x")
    assert triton.main(["--build", str(built), "--out", str(target)]) == 2
    one_line(capsys)


def test_triton_json_list_report_exits_2(built, tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    b = tmp_path / "b"
    b.mkdir()
    (b / REPORT_JSON).write_text("[1, 2]")
    assert triton.main(["--build", str(b), "--out", str(tmp_path / "r")]) == 2
    assert "not a JSON object" in one_line(capsys)


def test_triton_and_serving_check_the_weights_file_too(copy, tmp_path, capsys):
    """The graphs read model.onnx.data: a changed byte there is refused like a changed graph."""
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    from engines.serving.ort_model import OrtEncoder
    from export.errors import VerificationError

    out, _ = copy
    data = bytearray((out / "model.onnx.data").read_bytes())
    data[-1] ^= 1
    (out / "model.onnx.data").write_bytes(bytes(data))
    assert triton.main(["--build", str(out), "--out", str(tmp_path / "r")]) == 1
    assert "model.onnx.data" in one_line(capsys) and not (tmp_path / "r" / "tiny_onnx").exists()
    with pytest.raises(VerificationError, match="model.onnx.data"):
        OrtEncoder.from_build(out)
