"""export.folder.artifacts.verify_artifact: a build's file is used only if it is inside the build and unchanged."""

from __future__ import annotations

import hashlib

import pytest

from export.errors import UsageError
from export.folder.artifacts import verify_artifact


@pytest.fixture
def build(tmp_path):
    b = tmp_path / "build"
    b.mkdir()
    data = b"onnx bytes"
    (b / "model.onnx").write_bytes(data)
    (b / "engines").mkdir()
    (b / "engines" / "a.plan").write_bytes(b"plan")
    report = {"artifacts": {"onnx": "model.onnx"}, "artifacts_sha256": {"model.onnx": hashlib.sha256(data).hexdigest()}}
    return b, report


def refused(build_dir, rel, report) -> str:
    with pytest.raises(UsageError) as e:
        verify_artifact(build_dir, rel, report)
    msg = str(e.value)
    assert "\n" not in msg and "rebuild it with python -m export.build" in msg, msg
    return msg


def test_good_artifacts_resolve(build):
    b, report = build
    assert verify_artifact(b, "model.onnx", report) == (b / "model.onnx").resolve()
    assert verify_artifact(b, "engines/a.plan", report) == (b / "engines" / "a.plan").resolve()  # no hash: exists


def test_absolute_path(build):
    b, report = build
    assert "absolute path" in refused(b, str((b / "model.onnx").resolve()), report)


def test_dotdot(build):
    b, report = build
    assert "'..'" in refused(b, "../../etc/hostname", report)


def test_symlink_out_of_the_build(build, tmp_path):
    b, report = build
    (tmp_path / "outside.onnx").write_bytes(b"x")
    (b / "link.onnx").symlink_to(tmp_path / "outside.onnx")
    assert "outside" in refused(b, "link.onnx", report)


def test_missing(build):
    b, report = build
    assert "gone.onnx is missing" in refused(b, "gone.onnx", report)


def test_directory_is_not_an_artifact(build):
    b, report = build
    assert "not a regular file" in refused(b, "engines", report)


def test_modified_byte(build):
    b, report = build
    p = b / "model.onnx"
    data = bytearray(p.read_bytes())
    data[3] ^= 1
    p.write_bytes(bytes(data))
    msg = refused(b, "model.onnx", report)
    assert "model.onnx has sha256" in msg and "changed since the build" in msg
