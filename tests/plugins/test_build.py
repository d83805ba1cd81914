"""python -m plugins.build: finds libnvinfer where TensorRT users have it, and refuses headers of another
TensorRT major than the installed tensorrt package (exit 2, before CMake runs). No TensorRT needed: the
installed version and the wheel folder are looked up through functions these tests replace."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import pytest

from plugins import build as pb


def headers(tmp_path: Path, major: int) -> Path:
    inc = tmp_path / f"include{major}"
    inc.mkdir()
    (inc / "NvInfer.h").write_text("")
    (inc / "NvInferVersion.h").write_text(
        f"#define TRT_MAJOR_ENTERPRISE {major}\n#define TRT_MINOR_ENTERPRISE 1\n#define TRT_PATCH_ENTERPRISE 0\n"
    )
    return inc


def test_wheel_libnvinfer_is_passed_to_cmake(tmp_path, monkeypatch):
    """The pip wheels put only libnvinfer.so.<major> in tensorrt_libs/, which find_library does not see."""
    libs = tmp_path / "tensorrt_libs"
    libs.mkdir()
    (libs / "libnvinfer.so.11").write_bytes(b"")  # a path-discovery test: the file is never loaded
    real = importlib.util.find_spec

    def find_spec(name, *a):
        return _spec(name, libs) if name == "tensorrt_libs" else real(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.delenv("TensorRT_ROOT", raising=False)
    monkeypatch.delenv("RR_NVINFER_LIB", raising=False)
    args = pb.build_parser().parse_args(["--tensorrt-include", str(headers(tmp_path, 11))])
    assert pb.wheel_nvinfer(11) == libs / "libnvinfer.so.11" and pb.wheel_nvinfer(10) is None
    assert f"-DRR_NVINFER_LIB={libs / 'libnvinfer.so.11'}" in pb.configure_command(args)
    args = pb.build_parser().parse_args(["--tensorrt-root", str(tmp_path)])
    assert not any(a.startswith("-DRR_NVINFER_LIB") for a in pb.configure_command(args))  # the install's own lib/


def _spec(name, folder):
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    return spec


def test_headers_of_another_major_than_installed_tensorrt_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pb, "installed_tensorrt", lambda: "10.16.0")
    monkeypatch.setattr(pb, "missing_tools", lambda: [])
    code = pb.main(["--tensorrt-include", str(headers(tmp_path, 11)), "--build-dir", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "11.x" in err[0] and "10.16.0" in err[0], err
    assert not (tmp_path / "b").exists()  # refused before CMake ran
    monkeypatch.setattr(pb, "installed_tensorrt", lambda: "11.1.0")
    assert pb.major_mismatch(pb.build_parser().parse_args(["--tensorrt-include", str(headers(tmp_path, 12))]))
    assert pb.major_mismatch(pb.build_parser().parse_args(["--tensorrt-include", str(tmp_path / "include11")])) is None


def test_installed_tensorrt_reads_metadata_without_importing():
    v = pb.installed_tensorrt()
    if importlib.util.find_spec("tensorrt") is None:
        assert v is None
    else:
        pytest.skip(f"tensorrt {v} is installed here")
